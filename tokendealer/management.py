"""Managing the registry (clients, their federation rules, trusted issuers) and the keyring: the one place
whose rules, error texts and audit lines the CLI, the admin API (SPEC §3.2) and dynamic registration share.

Every change names who made it (`actor`: `cli:<OS user>`, or the client id of an admin API token) and
the way it came (`via`) in its audit line. Refusals are `ManagementError`s of four kinds, which each edge
maps once: 400 (`Invalid`), 404 (`Missing`), 409 (`Conflict`) and 412 (`Stale`, an `If-Match` that no
longer matches, or a record changed between read and write).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from client_lib.jose import ALGORITHMS

from . import db
from .audit import AuditLog
from .clients import Client, ClientChanged, ClientError, ClientExists, ClientNotFound, ClientStore, SecretHasher
from .config import Config
from .federation import FederationRule, RuleStore
from .issuers import IssuerError, IssuerNotFound, IssuerStore, TrustedIssuer
from .keyring import KeyStore
from .keystores import make_key_store

# The scopes of admin API tokens (SPEC §3.2) and of RFC 7591 initial access tokens.
ADMIN_SCOPE = "tokendealer:admin"
READ_SCOPE = "tokendealer:read"
REGISTER_SCOPE = "tokendealer:register"


class ManagementError(Exception):
    """A management request that is refused; the message is one readable line, safe to show."""


class Invalid(ManagementError):
    """A bad field or value (HTTP 400)."""


class Missing(ManagementError):
    """No such client, rule or issuer (HTTP 404)."""


class Conflict(ManagementError):
    """The name is taken (HTTP 409)."""


class Stale(ManagementError):
    """The record is not the version the caller read (HTTP 412)."""


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    """The stores' errors as the four kinds of refusal."""
    try:
        yield
    except ClientExists as exc:
        raise Conflict(str(exc)) from None
    except ClientChanged as exc:
        raise Stale(str(exc)) from None
    except (ClientNotFound, IssuerNotFound) as exc:
        raise Missing(str(exc)) from None
    except (ClientError, IssuerError) as exc:
        raise Invalid(str(exc)) from None


def cli_actor() -> str:
    """Who runs the CLI, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name for this uid (a container's arbitrary uid)
        return "cli"


def admin_bootstrap_command(config: Config, client_id: str = "admin") -> str:
    """The command creating a first admin client, which `init` prints (the admin API's bootstrap)."""
    return f"tokendealer client create {client_id} --scope {ADMIN_SCOPE} --scope {READ_SCOPE} --audience {config.management_audience}"


def etag(client: Client) -> str:
    """A strong validator of the client record as shown (RFC 9110 §8.8.3); any change makes a new one."""
    view = json.dumps(client.public_view(), sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(view.encode("utf-8")).hexdigest()[:32] + '"'


def if_match_check(if_match: str | None) -> Callable[[Client], None] | None:
    """A check refusing the record unless it is the version `if_match` names (RFC 9110 §13.1.1); None
    when no precondition was given."""
    if if_match is None:
        return None
    wanted = {tag.strip() for tag in if_match.split(",")}

    def check(client: Client) -> None:
        if "*" not in wanted and etag(client) not in wanted:
            raise ClientChanged(f"client {client.client_id!r} has changed since it was read (If-Match does not match); read it again")

    return check


# ---- the fields of `client show --json`, as JSON bodies (admin API) ----------------------------------

_LISTS = ("scopes", "audiences", "serves", "exchange_audiences")
_OPTIONAL_STRINGS = ("default_audience", "jwks_uri", "tls_subject", "tls_san")
WRITABLE = frozenset(
    {*_LISTS, *_OPTIONAL_STRINGS, "default_scopes", "token_ttl", "claims", "jwks", "require_dpop"},
)
# Every other field `client show --json` prints is set by the server (a field added to Client is read-only
# here until it is made writable above).
READ_ONLY = (
    frozenset({f.name for f in dataclasses.fields(Client)} | {"auth_method"})
    - WRITABLE
    - {
        "client_id",
        "secret_hash",
        "previous_secret_hash",
    }
)


def _string_list(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"field {name!r} must be a list of strings")
    return tuple(value)


def client_fields(body: Any, current: Client | None = None) -> dict[str, Any]:
    """The store fields a JSON body sets (a new client's when `current` is None, else changes to it).

    Unknown fields are refused; read-only ones (as `client show --json` prints them) only when they differ
    from the record, so a shown record may be sent back edited."""
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    fields: dict[str, Any] = {}
    for name, value in body.items():
        if name == "client_id":
            if current is not None and value != current.client_id:
                raise Invalid("field 'client_id' cannot be changed")
            continue
        if name in READ_ONLY:
            if current is None or value != current.public_view()[name]:
                raise Invalid(f"field {name!r} is set by the server")
            continue
        if name not in WRITABLE:
            raise Invalid(f"unknown field {name!r}")
        fields[name] = _field(name, value)
    return fields


def _field(name: str, value: Any) -> Any:
    """One body field, type-checked; its content is checked by the store like the CLI's options."""
    if name in _LISTS:
        return _string_list(name, value)
    if name == "default_scopes":
        return None if value is None else _string_list(name, value)
    if name in _OPTIONAL_STRINGS:
        if value is not None and not isinstance(value, str):
            raise Invalid(f"field {name!r} must be a string or null")
        return value
    if name == "token_ttl":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise Invalid("field 'token_ttl' must be an integer number of seconds or null")
        return value
    if name == "claims":
        if not isinstance(value, dict):
            raise Invalid("field 'claims' must be a JSON object")
        return value
    if name == "jwks":
        if value is not None and not isinstance(value, dict):
            raise Invalid("field 'jwks' must be a JWK Set object or null")
        return value
    if not isinstance(value, bool):
        raise Invalid(f"field {name!r} must be true or false")
    return value


@dataclass
class Management:
    """The management operations over one database and keyring, auditing each change."""

    config: Config
    clients: ClientStore
    issuers: IssuerStore
    rules: RuleStore
    keys: KeyStore
    audit: AuditLog
    clock: Callable[[], float] = time.time

    @classmethod
    def open(cls, config: Config, audit: AuditLog, clock: Callable[[], float] = time.time, engine: Engine | None = None) -> Management:
        """The operations over the configuration's database and keyring (the CLI; the app passes its own parts)."""
        engine = engine or db.make_engine(config.database_url)
        keys = make_key_store(config, clock, engine)
        clients = ClientStore(engine, SecretHasher(keys.pepper), clock, max_token_ttl=config.max_token_ttl)
        return cls(config, clients, IssuerStore(engine, clock), RuleStore(engine, clock), keys, audit, clock)

    def _audit(self, event: str, actor: str, via: str, **fields: Any) -> None:
        self.audit.emit(event, outcome="done", actor=actor, via=via, **fields)

    # ---- clients ----

    def create_client(self, actor: str, via: str, client_id: str, no_secret: bool = False, **fields: Any) -> tuple[Client, str | None]:
        """Register a client; returns it and its secret (shown once; None for a keyed or secretless client)."""
        with domain_errors():
            client, secret = self.clients.create(client_id, no_secret=no_secret, **fields)
        self._audit("client.created", actor, via, client_id=client.client_id, auth_method=client.auth_method)
        return client, secret

    def list_clients(self, after: str | None = None, limit: int | None = None) -> list[Client]:
        return self.clients.list(after, limit)

    def show_client(self, client_id: str) -> Client:
        with domain_errors():
            return self.clients.require(client_id)

    def update_client(self, actor: str, via: str, client_id: str, changes: dict[str, Any], if_match: str | None = None) -> Client:
        """Replace the fields given; with `if_match`, only the version the caller read."""
        if not changes:
            raise Invalid("nothing to update: give at least one field")
        with domain_errors():
            client = self.clients.update(client_id, check=if_match_check(if_match), **changes)
        self._audit("client.updated", actor, via, client_id=client_id, fields=sorted(changes))
        return client

    def delete_client(self, actor: str, via: str, client_id: str, if_match: str | None = None) -> None:
        with domain_errors():
            self.clients.delete(client_id, check=if_match_check(if_match))
        self._audit("client.deleted", actor, via, client_id=client_id)

    def set_enabled(self, actor: str, via: str, client_id: str, enabled: bool) -> Client:
        with domain_errors():
            client = self.clients.set_enabled(client_id, enabled)
        self._audit("client.enabled" if enabled else "client.disabled", actor, via, client_id=client_id)
        return client

    def rotate_secret(self, actor: str, via: str, client_id: str, grace: int = 0) -> tuple[Client, str]:
        """A new secret (shown once); the old one stays valid `grace` seconds."""
        with domain_errors():
            client, secret = self.clients.rotate_secret(client_id, grace)
        self._audit("client.secret_rotated", actor, via, client_id=client_id, grace=grace)
        return client, secret

    # ---- federation rules ----

    def federation_rules(self, client_id: str) -> list[FederationRule]:
        self.show_client(client_id)
        return self.rules.for_client(client_id)

    def federate(
        self,
        actor: str,
        via: str,
        client_id: str,
        issuer: str,
        subject: str,
        audience: str | None = None,
        conditions: tuple[str, ...] | list[str] = (),
        single_use: bool = False,
    ) -> tuple[FederationRule, list[str]]:
        """A new federation rule (SPEC §4.1); with the warnings to show (a loose subject prefix)."""
        warnings = []
        if subject.endswith("*") and subject[-2:-1] not in ("/", ":"):
            warnings.append(
                f"the subject prefix {subject!r} does not end at a / or :, so it also matches subjects that merely "
                "begin the same way (e.g. repo:org/app* matches repo:org/app-evil)"
            )
        with domain_errors():
            rule = self.rules.add(
                self.clients, self.issuers, client_id, issuer, subject, audience or self.config.issuer, tuple(conditions), single_use
            )
        self._audit("client.federated", actor, via, client_id=client_id, rule_id=rule.rule_id, issuer=issuer, subject=subject)
        return rule, warnings

    def remove_rule(self, actor: str, via: str, client_id: str, rule_id: str) -> None:
        with domain_errors():
            self.rules.remove(client_id, rule_id)
        self._audit("client.federation_removed", actor, via, client_id=client_id, rule_id=rule_id)

    # ---- trusted issuers ----

    def list_issuers(self) -> list[TrustedIssuer]:
        return self.issuers.list()

    def add_issuer(self, actor: str, via: str, url: str, jwks: dict[str, Any] | None = None, allow_http: bool = False) -> TrustedIssuer:
        """Trust an external issuer (SPEC §4.1); its discovery is fetched now unless `jwks` is given."""
        with domain_errors():
            record = self.issuers.add(url, jwks=jwks, allow_http=allow_http)
        self._audit("issuer.added", actor, via, issuer=url, keys="jwks" if record.jwks else "discovery")
        return record

    def remove_issuer(self, actor: str, via: str, url: str) -> int:
        """Stop trusting the issuer; returns how many federation rules went with it."""
        with domain_errors():
            removed = self.issuers.remove(url)
        self._audit("issuer.removed", actor, via, issuer=url, rules_removed=removed)
        return removed

    # ---- keys ----

    def key_rows(self) -> list[dict[str, Any]]:
        """Every key of the keyring: state, algorithm, age and when it may be pruned (no private material)."""
        now = self.clock()
        rows = []
        for record in self.keys.load().records:
            data = {k: v for k, v in record.to_json().items() if k != "jwk"}
            data["age_seconds"] = int(now - record.created_at)
            data["prunable_at"] = record.prunable_at(self.config.max_token_ttl + self.config.leeway)
            rows.append(data)
        return rows

    def init_keys(self, actor: str, via: str, alg: str) -> bool:
        """The first active key and a next key; False when the keyring exists already."""
        created = self.keys.init(alg)
        if created:
            self._audit("keys.initialised", actor, via, alg=alg)
        return created

    def rotate_keys(self, actor: str, via: str, alg: str | None = None, emergency: bool = False) -> list[str]:
        """Promote next to active (SPEC §4), or with `emergency` replace the active key at once; returns the
        warnings to show (a next key younger than verifiers' JWKS caches)."""
        if alg is not None and alg not in ALGORITHMS:
            raise Invalid(f"alg must be one of {', '.join(ALGORITHMS)}")
        warnings = []
        before = self.keys.load().record("next") if self.keys.exists() else None
        needed = self.config.jwks_max_age + self.config.keyring_reload_interval
        if before and not emergency and self.clock() - before.created_at < needed:
            warnings.append(
                f"the next key has been published for less than the JWKS max-age plus reload interval ({needed:g} s); "
                "verifiers holding a cached JWKS may not know it yet"
            )
        active = self.keys.rotate(alg=alg, emergency=emergency).active
        self._audit("keys.emergency_rotated" if emergency else "keys.rotated", actor, via, active_kid=active.kid if active else None)
        return warnings

    def prune_keys(self, actor: str, via: str) -> list[str]:
        """Delete retired keys whose tokens have all expired; returns their kids."""
        gone = self.keys.prune(self.config.max_token_ttl + self.config.leeway)
        if gone:
            self._audit("keys.pruned", actor, via, kids=[r.kid for r in gone])
        return [r.kid for r in gone]
