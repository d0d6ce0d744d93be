"""The registries `tokendealer apply` carries a plan out on: this machine's stores (every change audited with
actor `apply`), or a remote server's admin API (SPEC §3.2), which audits with the acting client's id."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .clients import ClientError, ClientStore
from .federation import RuleStore
from .issuers import IssuerError, IssuerStore
from .manifest import DesiredClient, DesiredIssuer, DesiredRule, Manifest, ManifestError
from .reconcile import RegistryError, Snapshot


@contextmanager
def _refusals() -> Iterator[None]:
    """The stores' refusals as RegistryError, with their own (already readable) text."""
    try:
        yield
    except (ClientError, IssuerError) as exc:
        raise RegistryError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise RegistryError(f"database error ({exc.__class__.__name__})") from None


class LocalRegistry:
    """The stores of this machine's configuration: the same validation as `tokendealer client …`."""

    def __init__(self, clients: ClientStore, rules: RuleStore, issuers: IssuerStore, audit: Callable[..., None]):
        self.clients = clients
        self.rules = rules
        self.issuers = issuers
        self.audit = audit

    def validate(self, manifest: Manifest) -> None:
        """Every client record through the registry's own checks, before anything is changed."""
        for desired in manifest.clients:
            try:
                self.clients.validate(desired.record)
            except ClientError as exc:
                raise ManifestError(f"{desired.where}: {exc}") from None

    def snapshot(self) -> Snapshot:
        with _refusals():
            clients = {c.client_id: c.public_view() for c in self.clients.list()}
            rules = {client_id: [r.view() for r in self.rules.for_client(client_id)] for client_id in clients}
            issuers = {i.issuer: i.view() for i in self.issuers.list()}
        return Snapshot(clients, rules, issuers)

    def create_client(self, client: DesiredClient) -> str | None:
        record = client.record
        with _refusals():
            created, secret = self.clients.create(
                record.client_id,
                scopes=record.scopes,
                audiences=record.audiences,
                default_scopes=record.default_scopes,
                default_audience=record.default_audience,
                token_ttl=record.token_ttl,
                claims=record.claims,
                jwks=record.jwks,
                jwks_uri=record.jwks_uri,
                serves=record.serves,
                exchange_audiences=record.exchange_audiences,
                require_dpop=record.require_dpop,
                tls_subject=record.tls_subject,
                tls_san=record.tls_san,
                no_secret=client.auth_method == "federated",
            )
            self.audit("client.created", client_id=created.client_id, auth_method=created.auth_method)
            if not record.enabled:
                self.clients.set_enabled(record.client_id, False)
                self.audit("client.disabled", client_id=record.client_id)
        return secret

    def update_client(self, client_id: str, changes: dict[str, Any]) -> None:
        fields = {k: v for k, v in changes.items() if k != "enabled"}
        with _refusals():
            if fields:
                self.clients.update(client_id, **fields)
                self.audit("client.updated", client_id=client_id, fields=sorted(fields))
            if "enabled" in changes:
                self.clients.set_enabled(client_id, changes["enabled"])
                self.audit("client.enabled" if changes["enabled"] else "client.disabled", client_id=client_id)

    def delete_client(self, client_id: str) -> None:
        with _refusals():
            self.clients.delete(client_id)
            self.audit("client.deleted", client_id=client_id)

    def add_rule(self, client_id: str, rule: DesiredRule) -> None:
        with _refusals():
            added = self.rules.add(
                self.clients, self.issuers, client_id, rule.issuer, rule.subject, rule.audience, rule.conditions, rule.single_use
            )
            self.audit("client.federated", client_id=client_id, rule_id=added.rule_id, issuer=rule.issuer, subject=rule.subject)

    def remove_rule(self, client_id: str, rule_id: str) -> None:
        with _refusals():
            self.rules.remove(client_id, rule_id)
            self.audit("client.federation_removed", client_id=client_id, rule_id=rule_id)

    def put_issuer(self, issuer: DesiredIssuer) -> None:
        with _refusals():
            record = self.issuers.add(issuer.issuer, jwks=issuer.jwks, allow_http=issuer.allow_http)
            self.audit("issuer.added", issuer=issuer.issuer, keys="jwks" if record.jwks else "discovery")

    def remove_issuer(self, issuer: str) -> None:
        with _refusals():
            rules = self.issuers.remove(issuer)
            self.audit("issuer.removed", issuer=issuer, rules_removed=rules)
