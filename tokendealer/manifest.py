"""The `tokendealer apply` file (SPEC §5): a TOML or YAML document of clients, their federation rules and
trusted issuers, checked against the JSON Schema shipped in `tokendealer/schemas/apply.schema.json` and then
normalised with the registry's own parsers, so that what is compared is what the registry would store."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .clients import Client, ClientError, check_audience, check_jwks, parse_scopes
from .federation import parse_conditions
from .issuers import IssuerError, check_url, usable_keys

# An apply file is written by people: a megabyte is far more than thousands of clients need.
MAX_FILE_BYTES = 1 << 20
AUTH_METHODS = ("client_secret", "private_key_jwt", "tls_client_auth", "federated")
# Fields `client show --json` prints that the registry sets itself: accepted (so its output can be pasted), ignored.
READ_ONLY = ("created_at", "updated_at", "tokens_not_before", "previous_secret_expires_at")
# Credentials never live in the file, under any of the names they go by.
SECRET_FIELDS = ("client_secret", "secret", "registration_access_token", "secret_hash", "previous_secret_hash")


class ManifestError(Exception):
    """The file cannot be used; the message is one line naming the entry and field."""


@dataclass(frozen=True)
class DesiredRule:
    """A federation rule as the file states it; rules are matched by content, never by rule_id."""

    issuer: str
    subject: str
    audience: str
    conditions: tuple[str, ...]  # sorted `CLAIM=VALUE`: all must hold, so their order means nothing
    single_use: bool = False

    @property
    def key(self) -> tuple[str, str, str, tuple[str, ...]]:
        return (self.issuer, self.subject, self.audience, self.conditions)

    def view(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "audience": self.audience,
            "conditions": list(self.conditions),
            "single_use": self.single_use,
        }


@dataclass(frozen=True)
class DesiredClient:
    """A client as the file states it: `record` holds its fields as the registry would store them."""

    record: Client
    auth_method: str
    rules: tuple[DesiredRule, ...] = ()
    where: str = ""  # `clients[3] (billing)`, for messages
    # `enabled` is managed only when the entry states it, so a client disabled in an emergency
    # (`client disable`) is not enabled again by the next apply of a file that never mentioned it.
    states_enabled: bool = True

    @property
    def client_id(self) -> str:
        return self.record.client_id

    def fields(self) -> dict[str, Any]:
        """The managed fields, shaped as `client show --json` prints them."""
        view = self.record.public_view()
        fields = {name: view[name] for name in MANAGED_FIELDS if name != "auth_method"} | {"auth_method": self.auth_method}
        if not self.states_enabled:
            del fields["enabled"]
        return fields


@dataclass(frozen=True)
class DesiredIssuer:
    """A trusted issuer as the file states it: its keys inline (`jwks`), or else through its discovery."""

    issuer: str
    jwks: dict[str, Any] | None = None
    allow_http: bool = False


@dataclass(frozen=True)
class Manifest:
    clients: tuple[DesiredClient, ...]
    # None when the file has no `issuers` key: then trusted issuers are not managed by the file at all.
    issuers: tuple[DesiredIssuer, ...] | None = field(default=None)


# The client fields an apply file manages: an omitted field is its default (the file is the whole truth), except
# `enabled`, left as it is unless stated.
MANAGED_FIELDS = (
    "scopes",
    "audiences",
    "default_scopes",
    "default_audience",
    "token_ttl",
    "claims",
    "jwks",
    "jwks_uri",
    "serves",
    "exchange_audiences",
    "require_dpop",
    "tls_subject",
    "tls_san",
    "enabled",
    "auth_method",
)


class _StrictYaml(yaml.SafeLoader):
    """YAML as an apply file may use it: no aliases (a few nested `*ref`s make a document that takes ages to
    walk) and no key given twice in a mapping (YAML would silently keep the last: a typo hiding a field)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:
                continue  # an unhashable key, which the SafeLoader refuses itself
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of the apply file, as shipped in the package."""
    text = resources.files("tokendealer.schemas").joinpath("apply.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def load(path: str | Path, default_audience: str) -> Manifest:
    """Read, check and normalise an apply file; `default_audience` is a federation rule's audience when it names
    none (this server's issuer URL, as for `client federate`)."""
    return parse(read(path), default_audience)


def read(path: str | Path) -> Any:
    """The document in a `.toml`, `.yaml`/`.yml` or `.json` file (JSON is read as YAML, of which it is a subset)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ManifestError(f"{path}: the file must end in .toml, .yaml, .yml or .json")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        if suffix == ".toml":
            return tomllib.loads(text)
        return yaml.load(text, Loader=_StrictYaml)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not valid TOML ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or 'syntax error'})") from None


def parse(document: Any, default_audience: str) -> Manifest:
    """Check a decoded document against the schema, then each entry with the registry's own rules."""
    _refuse_secrets(document)
    # The first error in document order (list indexes and keys never compared with each other).
    errors = sorted(
        jsonschema.Draft202012Validator(schema()).iter_errors(document), key=lambda e: [(isinstance(p, str), p) for p in e.absolute_path]
    )
    if errors:
        raise ManifestError(_describe(document, errors[0]))
    clients = []
    seen: set[str] = set()
    for index, entry in enumerate(document["clients"]):
        where = f"clients[{index}] ({entry['client_id']})"
        if entry["client_id"] in seen:
            raise ManifestError(f"{where}: client_id: {entry['client_id']!r} appears twice in the file")
        seen.add(entry["client_id"])
        clients.append(_client(entry, where, default_audience))
    issuers = None
    if "issuers" in document:
        issuers = tuple(_issuer(entry, f"issuers[{index}]") for index, entry in enumerate(document["issuers"]))
        if len({i.issuer for i in issuers}) != len(issuers):
            raise ManifestError("issuers: an issuer appears twice in the file")
    return Manifest(tuple(clients), issuers)


def _refuse_secrets(document: Any) -> None:
    if not isinstance(document, dict) or not isinstance(document.get("clients"), list):
        return  # the schema says what is wrong
    for index, entry in enumerate(document["clients"]):
        if isinstance(entry, dict):
            for name in SECRET_FIELDS:
                if name in entry:
                    raise ManifestError(
                        f"{_entry_name(document, ['clients', index])}: {name}: secrets never live in the apply file; "
                        "a new client's secret is printed once (or written to --secrets-out)"
                    )


def _entry_name(document: Any, path: list[Any]) -> str:
    """`clients[2] (billing)` for a path into the document; the entry's id when it has one."""
    if len(path) >= 2 and isinstance(path[1], int):
        kind, index = path[0], path[1]
        entry = document[kind][index]
        label = entry.get("client_id" if kind == "clients" else "issuer") if isinstance(entry, dict) else None
        return f"{kind}[{index}]" + (f" ({label})" if isinstance(label, str) else "")
    return "the file"


def _describe(document: Any, error: jsonschema.ValidationError) -> str:
    """One line: which entry, which field, what is wrong (the value itself only when it is short)."""
    path = list(error.absolute_path)
    entry = _entry_name(document, path)
    rest = path[2:] if len(path) >= 2 and isinstance(path[1], int) else path
    field_path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest).lstrip(".")
    if error.validator == "additionalProperties":
        unexpected = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{entry}: unknown field {', '.join(map(repr, unexpected))}" + (f" in {field_path}" if field_path else "")
    if error.validator == "required":
        return f"{entry}: {error.message}" + (f" (in {field_path})" if field_path else "")
    message = error.message if len(error.message) <= 200 else f"{error.validator} check failed"
    if error.validator in ("anyOf", "oneOf", "allOf"):
        message = "has the wrong type or value"
    return f"{entry}: {field_path or 'entry'}: {message}"


def _client(entry: dict[str, Any], where: str, default_audience: str) -> DesiredClient:
    try:
        record = Client(
            client_id=entry["client_id"],
            scopes=parse_scopes(entry.get("scopes", ())),
            audiences=tuple(check_audience(a) for a in entry["audiences"]),
            default_scopes=None if entry.get("default_scopes") is None else parse_scopes(entry["default_scopes"]),
            default_audience=entry.get("default_audience"),
            token_ttl=entry.get("token_ttl"),
            claims=dict(entry.get("claims") or {}),
            jwks=check_jwks(entry["jwks"]) if entry.get("jwks") is not None else None,
            jwks_uri=entry.get("jwks_uri"),
            enabled=entry.get("enabled", True),
            serves=tuple(check_audience(a) for a in entry.get("serves", ())),
            exchange_audiences=tuple(check_audience(a) for a in entry.get("exchange_audiences", ())),
            require_dpop=entry.get("require_dpop", False),
            tls_subject=entry.get("tls_subject"),
            tls_san=entry.get("tls_san"),
        )
    except ClientError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    implied = "private_key_jwt" if record.jwks or record.jwks_uri else "tls_client_auth" if record.tls_subject or record.tls_san else None
    method = entry.get("auth_method") or implied or "client_secret"
    if implied and method != implied:
        raise ManifestError(f"{where}: auth_method: {method!r} does not go with its keys or certificate ({implied})")
    if method in ("private_key_jwt", "tls_client_auth") and not implied:
        needs = "jwks or jwks_uri" if method == "private_key_jwt" else "tls_subject or tls_san"
        raise ManifestError(f"{where}: auth_method: {method} needs {needs}")
    rules: list[DesiredRule] = []
    for index, rule in enumerate(entry.get("federation", ())):
        try:
            desired = DesiredRule(
                issuer=rule["issuer"],
                subject=rule["subject"],
                audience=check_audience(rule.get("audience", default_audience)),
                conditions=tuple(sorted(f"{p}={v}" for p, v in parse_conditions(rule.get("conditions", ())))),
                single_use=rule.get("single_use", False),
            )
        except ClientError as exc:
            raise ManifestError(f"{where}: federation[{index}]: {exc}") from None
        if any(r.key == desired.key for r in rules):
            raise ManifestError(f"{where}: federation[{index}]: the same rule appears twice")
        rules.append(desired)
    return DesiredClient(record, method, tuple(rules), where, states_enabled="enabled" in entry)


def _issuer(entry: dict[str, Any], where: str) -> DesiredIssuer:
    allow_http = entry.get("allow_http", False)
    try:
        check_url(entry["issuer"], allow_http)
        jwks = usable_keys(entry["jwks"]) if "jwks" in entry else None
    except IssuerError as exc:
        raise ManifestError(f"{where}: issuer: {exc}") from None
    except ValueError as exc:
        raise ManifestError(f"{where}: jwks: {exc}") from None
    return DesiredIssuer(entry["issuer"], jwks, allow_http)
