"""What `tokendealer apply` changes: the plan that makes a registry match an apply file (I/O-free), carrying it
out in order on a registry (local stores or the admin API), and the report of both."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .clients import Client
from .manifest import DesiredClient, DesiredIssuer, DesiredRule, Manifest, ManifestError

SECRET_METHOD = "client_secret"


class RegistryError(Exception):
    """A change the registry refused or could not make; the message is safe to print."""


@dataclass(frozen=True)
class Snapshot:
    """A registry's current state, in the shapes `client show --json`, `client federate --list --json` and
    `issuers list --json` print."""

    clients: dict[str, dict[str, Any]]
    rules: dict[str, list[dict[str, Any]]]  # client_id -> its rules (with rule_id)
    issuers: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Change:
    """One step of a plan. `fields` maps each field to (old, new); a create has old None."""

    action: str  # create | update | delete
    kind: str  # client | rule | issuer
    name: str  # the client id, or the issuer URL
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    client: DesiredClient | None = None
    rule: DesiredRule | None = None
    rule_id: str | None = None  # the existing rule an update or delete replaces
    issuer: DesiredIssuer | None = None
    seen: dict[str, Any] | None = field(default=None, repr=False)  # the client as read: changed since, it is not touched

    def label(self) -> str:
        if self.rule is not None:
            return f"federation rule of {self.name}: {_rule_text(self.rule)}"
        return f"{self.kind} {self.name}"

    def view(self) -> dict[str, Any]:
        data: dict[str, Any] = {"action": self.action, "kind": self.kind, "name": self.name}
        if self.rule_id:
            data["rule_id"] = self.rule_id
        if self.rule:
            data["rule"] = self.rule.view()
        if self.fields:
            data["fields"] = {k: {"old": _shown(k, old), "new": _shown(k, new)} for k, (old, new) in self.fields.items()}
        return data


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    unchanged: tuple[str, ...]  # labels of what already matches
    not_pruned: tuple[str, ...]  # labels of what --prune would delete

    def view(self) -> dict[str, Any]:
        return {"changes": [c.view() for c in self.changes], "unchanged": list(self.unchanged), "not_pruned": list(self.not_pruned)}


class Registry(Protocol):
    """Where a plan is carried out: the local stores, or a server's admin API. Each method raises RegistryError."""

    def validate(self, manifest: Manifest) -> None: ...
    def snapshot(self) -> Snapshot: ...
    def create_client(self, client: DesiredClient) -> str | None: ...
    def update_client(self, client_id: str, changes: dict[str, Any], seen: dict[str, Any]) -> None: ...
    def delete_client(self, client_id: str, seen: dict[str, Any]) -> None: ...
    def add_rule(self, client_id: str, rule: DesiredRule) -> list[str]: ...
    def remove_rule(self, client_id: str, rule_id: str) -> None: ...
    def put_issuer(self, issuer: DesiredIssuer) -> None: ...
    def remove_issuer(self, issuer: str) -> None: ...


def plan(manifest: Manifest, current: Snapshot, prune: bool) -> Plan:
    """The changes that make `current` match `manifest`, in the order they must be made: issuers before the rules
    naming them, rules after their clients, deletions last. Nothing is deleted unless `prune`."""
    changes: list[Change] = []
    unchanged: list[str] = []
    not_pruned: list[str] = []
    trusted = set(current.issuers)
    if manifest.issuers is not None:
        trusted = {i.issuer for i in manifest.issuers}
        for issuer in manifest.issuers:
            _issuer_step(issuer, current.issuers.get(issuer.issuer), changes, unchanged)
    rule_changes: list[Change] = []
    for desired in manifest.clients:
        for rule in desired.rules:
            if rule.issuer not in trusted:
                raise ManifestError(
                    f"{desired.where}: federation: {rule.issuer!r} is not a trusted issuer; list it under issuers "
                    "or add it with `tokendealer issuers add`"
                )
        _client_step(desired, current.clients.get(desired.client_id), changes, unchanged)
        _rule_steps(desired, current.rules.get(desired.client_id, []), prune, rule_changes, unchanged, not_pruned)
    changes += rule_changes
    wanted = {c.client_id for c in manifest.clients}
    for client_id in sorted(set(current.clients) - wanted):
        gone = Change("delete", "client", client_id, seen=current.clients[client_id])
        (changes.append(gone) if prune else not_pruned.append(f"client {client_id}"))
    if manifest.issuers is not None:
        for url in sorted(set(current.issuers) - trusted):
            (changes.append(Change("delete", "issuer", url)) if prune else not_pruned.append(f"issuer {url}"))
    return Plan(tuple(changes), tuple(unchanged), tuple(not_pruned))


def _issuer_step(desired: DesiredIssuer, current: dict[str, Any] | None, changes: list[Change], unchanged: list[str]) -> None:
    want = _issuer_fields(desired)
    if current is None:
        changes.append(Change("create", "issuer", desired.issuer, {k: (None, v) for k, v in want.items()}, issuer=desired))
        return
    have = {"keys": current.get("keys"), "kids": sorted(current.get("kids") or []) or None, "allow_http": current.get("allow_http")}
    diff = {k: (have[k], v) for k, v in want.items() if have[k] != v}
    if diff:
        changes.append(Change("update", "issuer", desired.issuer, diff, issuer=desired))
    else:
        unchanged.append(f"issuer {desired.issuer}")


def _issuer_fields(issuer: DesiredIssuer) -> dict[str, Any]:
    """What an issuer is compared by: where its keys come from, their kids, and whether http is allowed (the
    `issuers list --json` view, which carries kids rather than keys)."""
    kids = sorted(str(k.get("kid")) for k in issuer.jwks["keys"]) if issuer.jwks else None
    return {"keys": "jwks" if issuer.jwks else "discovery", "kids": kids, "allow_http": issuer.allow_http}


def _client_step(desired: DesiredClient, current: dict[str, Any] | None, changes: list[Change], unchanged: list[str]) -> None:
    want = desired.fields()
    if current is None:
        # A new client's report names the fields that differ from a bare client's, and how it authenticates.
        bare = DesiredClient(Client(desired.client_id, (), ()), desired.auth_method).fields()
        shown = {k: (None, v) for k, v in want.items() if v != bare[k] or k == "auth_method"}
        changes.append(Change("create", "client", desired.client_id, shown, client=desired))
        return
    diff = {k: (current.get(k), v) for k, v in want.items() if current.get(k) != v}
    if "auth_method" in diff and SECRET_METHOD in diff["auth_method"]:
        old, new = diff["auth_method"]
        raise ManifestError(
            f"{desired.where}: auth_method: {old} -> {new} cannot be changed in place (a secret is neither added to "
            "nor kept on a client that changes how it authenticates); give the client a new client_id"
        )
    if diff:
        changes.append(Change("update", "client", desired.client_id, diff, client=desired, seen=current))
    else:
        unchanged.append(f"client {desired.client_id}")


def _rule_steps(
    desired: DesiredClient,
    current: list[dict[str, Any]],
    prune: bool,
    changes: list[Change],
    unchanged: list[str],
    not_pruned: list[str],
) -> None:
    have = {_rule_key(r): r for r in current}
    for rule in desired.rules:
        found = have.pop(rule.key, None)
        if found is None:
            changes.append(Change("create", "rule", desired.client_id, rule=rule))
        elif bool(found.get("single_use")) != rule.single_use:
            fields = {"single_use": (bool(found.get("single_use")), rule.single_use)}
            changes.append(Change("update", "rule", desired.client_id, fields, rule=rule, rule_id=found["rule_id"]))
        else:
            unchanged.append(f"federation rule of {desired.client_id}: {_rule_text(rule)}")
    for found in have.values():
        gone = Change("delete", "rule", desired.client_id, rule=_rule_of_view(found), rule_id=found["rule_id"])
        (changes.append(gone) if prune else not_pruned.append(gone.label()))


def _rule_key(view: dict[str, Any]) -> tuple[str, str, str, tuple[str, ...]]:
    return (view["issuer"], view["subject"], view["audience"], tuple(sorted(view.get("conditions") or [])))


def _rule_of_view(view: dict[str, Any]) -> DesiredRule:
    issuer, subject, audience, conditions = _rule_key(view)
    return DesiredRule(issuer, subject, audience, conditions, bool(view.get("single_use")))


def _rule_text(rule: DesiredRule) -> str:
    text = f"issuer={rule.issuer} subject={rule.subject} audience={rule.audience}"
    text += "".join(f" {c}" for c in rule.conditions)
    return text + (" single-use" if rule.single_use else "")


@dataclass
class Outcome:
    """What `execute` did: the changes made, the secrets of new clients, and the change that failed (if any),
    after which nothing more was tried."""

    done: list[Change] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    failed: Change | None = None
    error: str | None = None


def execute(steps: Iterable[Change], registry: Registry) -> Outcome:
    """Make the changes one by one, stopping at the first refusal; the outcome says exactly how far it got, and
    keeps the secrets of the clients created before it (they exist and must not be lost)."""
    outcome = Outcome()
    for change in steps:
        try:
            _make(change, registry, outcome)
        except RegistryError as exc:
            outcome.failed, outcome.error = change, str(exc)
            break
        outcome.done.append(change)
    return outcome


def _make(change: Change, registry: Registry, outcome: Outcome) -> None:
    if change.kind == "issuer":
        if change.action == "delete":
            registry.remove_issuer(change.name)
        else:
            assert change.issuer is not None
            registry.put_issuer(change.issuer)
    elif change.kind == "client":
        if change.action == "create":
            assert change.client is not None
            secret = registry.create_client(change.client)
            if secret:
                outcome.secrets[change.name] = secret
        elif change.action == "update":
            assert change.seen is not None
            registry.update_client(change.name, {k: new for k, (_, new) in change.fields.items() if k != "auth_method"}, change.seen)
        else:
            assert change.seen is not None
            registry.delete_client(change.name, change.seen)
    else:
        if change.rule_id:
            registry.remove_rule(change.name, change.rule_id)
        if change.action != "delete":
            assert change.rule is not None
            outcome.warnings += registry.add_rule(change.name, change.rule)


def _shown(name: str, value: Any) -> Any:
    """A field as a report shows it: a JWK Set by its key ids."""
    if name == "jwks" and isinstance(value, dict):
        return {"kids": [k.get("kid") for k in value.get("keys", [])]}
    return value


def _text(name: str, value: Any) -> str:
    return json.dumps(_shown(name, value), sort_keys=True, separators=(", ", ": "))


def change_lines(change: Change, prefix: str = "") -> list[str]:
    """A change as text: `create client billing` then one `  field: old -> new` line per field."""
    lines = [f"{prefix}{change.action} {change.label()}"]
    for name, (old, new) in change.fields.items():
        shown = _text(name, new) if change.action == "create" else f"{_text(name, old)} -> {_text(name, new)}"
        lines.append(f"    {name}: {shown}")
    return lines


def report(plan: Plan, outcome: Outcome | None, secrets_to: str | None) -> list[str]:
    """The text report of a plan (a dry run when `outcome` is None) or of what was done."""
    lines: list[str] = []
    if outcome is None:
        for change in plan.changes:
            lines += change_lines(change, "would ")
    else:
        for change in outcome.done:
            lines += change_lines(change)
            if change.name in outcome.secrets and change.kind == "client" and change.action == "create":
                if secrets_to:
                    lines.append(f"    client_secret: written to {secrets_to}")
                else:
                    lines.append(f"    client_secret: {outcome.secrets[change.name]}   (shown once)")
        if outcome.failed is not None:
            lines += change_lines(outcome.failed, "FAILED: ")
            lines.append(f"    error: {outcome.error}")
            left = plan.changes[len(outcome.done) + 1 :]
            lines += [f"not attempted: {c.action} {c.label()}" for c in left]
        lines += [f"warning: {warning}" for warning in outcome.warnings]
    lines += [f"unchanged: {label}" for label in plan.unchanged]
    lines += [f"not deleted (use --prune): {label}" for label in plan.not_pruned]
    if not plan.changes:
        lines.append("no changes: the registry already matches the file")
    return lines
