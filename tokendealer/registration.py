"""Dynamic client registration (RFC 7591) and its management protocol (RFC 7592), over the management layer.

A registration needs an initial access token (RFC 7591 §3): an access token of this server for the admin
audience with scope `tokendealer:register`. What it may register is bounded by claims of that token, which an
operator sets on the registering client (`client create … --claim registration_audiences='["https://a"]'`):

- `registration_audiences`: the audiences a registered client may have (required: without it, nothing can
  be registered, since every client needs one);
- `registration_scopes`: the scopes it may have (absent: none);
- `registration_auth_methods`: its `token_endpoint_auth_method`s (absent: client_secret_basic,
  client_secret_post and private_key_jwt; `tls_client_auth` only when listed);
- `registration_jwks_uris`: the https `jwks_uri`s it may have, each exactly or, for one ending in `/`, any URL
  under it (absent: none, so a registrant never chooses what the server fetches; `jwks` by value always works).

Whatever the limits, no registered client gets a `tokendealer:` scope or the admin audience (a registrant
never mints a client that manages the server). The limits are kept with the registration and bound its RFC
7592 updates too. The registration access token
is 256 random bits, stored only as its keyed hash (like client secrets), compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import clients as client_secrets
from . import db
from .clients import Client, SecretHasher, parse_scopes
from .config import Config
from .management import Invalid, Management, domain_errors

VIA = "registration"
CLIENT_CREDENTIALS = "client_credentials"
SECRET_METHODS = ("client_secret_basic", "client_secret_post")
DEFAULT_AUTH_METHODS = (*SECRET_METHODS, "private_key_jwt")
AUTH_METHODS = (*DEFAULT_AUTH_METHODS, "tls_client_auth")
# The management scopes (tokendealer:admin, :read, :register): never for a registered client.
RESERVED_SCOPE_PREFIX = "tokendealer:"
# RFC 8705 §2.1.2: the one certificate identity of a tls_client_auth client.
TLS_FIELDS = ("tls_client_auth_subject_dn", "tls_client_auth_san_dns", "tls_client_auth_san_uri")


class RegistrationTokenRejected(Exception):
    """The registration access token does not manage this client (RFC 7592 §2: 401 invalid_token)."""


@dataclass(frozen=True)
class Limits:
    """What an initial access token allows a registration to ask for."""

    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    auth_methods: tuple[str, ...]
    jwks_uris: tuple[str, ...] = ()  # default for registrations stored before it existed

    def allows_jwks_uri(self, uri: str) -> bool:
        """Whether `uri` is an https URL the operator allowed: listed, or under a listed prefix ending in `/`."""
        return uri.startswith("https://") and any(uri == p or (p.endswith("/") and uri.startswith(p)) for p in self.jwks_uris)

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Limits:
        """The limits carried by an initial access token's claims (see the module docstring)."""

        def listed(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            value = claims.get(name)
            if value is None:
                return default
            if isinstance(value, str):
                return tuple(value.split())
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise Invalid(f"the initial access token's {name} claim is not a list of strings")

        return cls(
            audiences=listed("registration_audiences", ()),
            scopes=listed("registration_scopes", ()),
            auth_methods=listed("registration_auth_methods", DEFAULT_AUTH_METHODS),
            jwks_uris=listed("registration_jwks_uris", ()),
        )

    def view(self) -> dict[str, list[str]]:
        return {
            "audiences": list(self.audiences),
            "scopes": list(self.scopes),
            "auth_methods": list(self.auth_methods),
            "jwks_uris": list(self.jwks_uris),
        }


@dataclass(frozen=True)
class Request:
    """RFC 7591 §2 metadata, checked against the limits: the client fields, and the metadata kept beside them."""

    fields: dict[str, Any]
    metadata: dict[str, Any]
    auth_method: str


def parse_metadata(body: Any, limits: Limits, admin_audience: str) -> Request:
    """RFC 7591 §2 client metadata within `limits`; `Invalid` (answered invalid_client_metadata) names the field.
    Metadata this server does not use is ignored, as §2 requires. Whatever the limits say, a registration never
    gets a `tokendealer:` scope or the `admin_audience`: a registrant cannot mint a client that manages the server."""
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object of client metadata")
    grant_types = body.get("grant_types", [CLIENT_CREDENTIALS])
    if grant_types != [CLIENT_CREDENTIALS]:
        raise Invalid('grant_types: only ["client_credentials"] can be registered')
    method = body.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise Invalid(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
    if method not in limits.auth_methods:
        raise Invalid(f"token_endpoint_auth_method {method} is not allowed by the initial access token")
    scope = body.get("scope", "")
    if not isinstance(scope, str):
        raise Invalid("scope must be a space-separated string")
    with domain_errors():
        scopes = parse_scopes([scope])
    reserved = [s for s in scopes if s.startswith(RESERVED_SCOPE_PREFIX)]
    if reserved:
        raise Invalid(f"scope {reserved[0]!r} manages this server and cannot be registered")
    beyond = [s for s in scopes if s not in limits.scopes]
    if beyond:
        raise Invalid(f"scope {beyond[0]!r} is not allowed by the initial access token")
    audiences = body.get("audiences", list(limits.audiences[:1]) if len(limits.audiences) == 1 else None)
    if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
        raise Invalid("audiences must be a non-empty list of strings (the audiences the client's tokens may have)")
    if admin_audience in audiences:
        raise Invalid(f"audience {admin_audience!r} is this server's admin audience and cannot be registered")
    beyond = [a for a in audiences if a not in limits.audiences]
    if beyond:
        raise Invalid(f"audience {beyond[0]!r} is not allowed by the initial access token")
    fields: dict[str, Any] = {"scopes": scopes, "audiences": tuple(audiences)}
    jwks, jwks_uri = body.get("jwks"), body.get("jwks_uri")
    if method == "private_key_jwt":
        if (jwks is None) == (jwks_uri is None):
            raise Invalid("private_key_jwt needs exactly one of jwks and jwks_uri")
        if jwks is not None and not isinstance(jwks, dict):
            raise Invalid("jwks must be a JWK Set object")
        if jwks_uri is not None and not isinstance(jwks_uri, str):
            raise Invalid("jwks_uri must be a URL")
        if jwks_uri is not None and not limits.allows_jwks_uri(jwks_uri):
            # The server fetches it: a registrant's choice would point the server at internal addresses (SSRF).
            raise Invalid("jwks_uri is not allowed by the initial access token (registration_jwks_uris); send jwks instead")
        fields.update(jwks=jwks, jwks_uri=jwks_uri)
    elif jwks is not None or jwks_uri is not None:
        raise Invalid(f"jwks and jwks_uri are for private_key_jwt, not {method}")
    given = {name: body[name] for name in TLS_FIELDS if body.get(name) is not None}
    if method == "tls_client_auth":
        if len(given) != 1 or not all(isinstance(v, str) for v in given.values()):
            raise Invalid(f"tls_client_auth needs exactly one of {', '.join(TLS_FIELDS)}")
        field, value = next(iter(given.items()))
        fields["tls_subject" if field == "tls_client_auth_subject_dn" else "tls_san"] = value
    elif given:
        raise Invalid(f"{next(iter(given))} is for tls_client_auth, not {method}")
    # RFC 9449 §5.2: a client that always sends DPoP proofs (its plain requests are refused).
    dpop_bound = body.get("dpop_bound_access_tokens", False)
    if not isinstance(dpop_bound, bool):
        raise Invalid("dpop_bound_access_tokens must be true or false")
    fields["require_dpop"] = dpop_bound
    metadata: dict[str, Any] = {"token_endpoint_auth_method": method, "grant_types": [CLIENT_CREDENTIALS], **given}
    client_name = body.get("client_name")
    if client_name is not None:
        if not isinstance(client_name, str) or len(client_name) > 200 or not client_name.isprintable():
            raise Invalid("client_name must be printable text of at most 200 characters")
        metadata["client_name"] = client_name
    return Request(fields, metadata, method)


@dataclass(frozen=True)
class Registration:
    """A registered client's RFC 7592 record."""

    client_id: str
    token_hash: str
    metadata: dict[str, Any]
    limits: Limits
    registered_by: str
    created_at: float


class Registrar:
    """RFC 7591 registration and RFC 7592 read, update and delete."""

    def __init__(self, config: Config, engine: Engine, manage: Management, hasher: SecretHasher, clock: Callable[[], float] = time.time):
        self.config = config
        self.engine = engine
        self.manage = manage
        self.hasher = hasher
        self.clock = clock

    def client_uri(self, client_id: str) -> str:
        """RFC 7591 §3.2.1 registration_client_uri."""
        return self.config.url(f"/oauth/register/{client_id}")

    def register(self, registered_by: str, claims: dict[str, Any], body: Any) -> dict[str, Any]:
        """RFC 7591 §3: register a client within the initial access token's limits; §3.2.1's answer."""
        limits = Limits.from_claims(claims)
        request = parse_metadata(body, limits, self.config.management_audience)
        client_id = "dcr-" + secrets.token_hex(10)
        client, secret = self.manage.create_client(
            registered_by, VIA, client_id, no_secret=request.auth_method not in SECRET_METHODS, **request.fields
        )
        token = client_secrets.new_secret()
        row = {
            "client_id": client_id,
            "token_hash": self.hasher.hash(token),
            "metadata": request.metadata,
            "limits": limits.view(),
            "registered_by": registered_by,
            "created_at": client.created_at,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(db.registrations.insert().values(**row))
        except sa.exc.SQLAlchemyError:
            self.manage.delete_client(registered_by, VIA, client_id)  # no client without its registration
            raise
        answer = self._answer(client, request.metadata)
        answer["registration_access_token"] = token
        if secret:
            answer.update(client_secret=secret, client_secret_expires_at=0)
        return answer

    def authorised(self, client_id: str, token: str | None) -> Registration:
        """The registration `token` manages (RFC 7592 §2), else RegistrationTokenRejected."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.registrations).where(db.registrations.c.client_id == client_id)).first()
        presented = self.hasher.hash(token or "")
        # Compared even when there is no such registration, so timing does not tell registered ids apart.
        ok = hmac.compare_digest(presented, row.token_hash if row else "0" * len(presented))
        if row is None or not ok or not token:
            raise RegistrationTokenRejected("the registration access token is not valid for this client")
        data = dict(row._mapping)
        data["limits"] = Limits(**{k: tuple(v) for k, v in data["limits"].items()})
        return Registration(**data)

    def read(self, registration: Registration) -> dict[str, Any]:
        """RFC 7592 §2.1: the client's current metadata (never its secret, which is stored only hashed)."""
        return self._answer(self.manage.show_client(registration.client_id), registration.metadata)

    def update(self, registration: Registration, body: Any) -> dict[str, Any]:
        """RFC 7592 §2.2: replace the metadata, within the limits it was registered with; the auth method stays."""
        if isinstance(body, dict) and body.get("client_id") != registration.client_id:
            raise Invalid("client_id must be the registered client's")
        if isinstance(body, dict) and "client_secret" in body:
            raise Invalid("client_secret cannot be set; rotate it through the admin API")
        request = parse_metadata(body, registration.limits, self.config.management_audience)
        if request.auth_method != registration.metadata["token_endpoint_auth_method"]:
            raise Invalid("token_endpoint_auth_method cannot change; register a new client")
        client = self.manage.update_client(registration.client_id, VIA, registration.client_id, request.fields)
        with self.engine.begin() as conn:
            table = db.registrations
            conn.execute(table.update().where(table.c.client_id == registration.client_id).values(metadata=request.metadata))
        return self._answer(client, request.metadata)

    def delete(self, registration: Registration) -> None:
        """RFC 7592 §2.3: deregister; the client goes, with its registration (ClientStore.delete)."""
        self.manage.delete_client(registration.client_id, VIA, registration.client_id)

    def _answer(self, client: Client, metadata: dict[str, Any]) -> dict[str, Any]:
        """The client's registered metadata (RFC 7591 §3.2.1 without the credentials)."""
        answer: dict[str, Any] = {
            "client_id": client.client_id,
            "client_id_issued_at": int(client.created_at),
            **metadata,
            "scope": " ".join(client.scopes),
            "audiences": list(client.audiences),
            "dpop_bound_access_tokens": client.require_dpop,
            "registration_client_uri": self.client_uri(client.client_id),
        }
        if client.jwks is not None:
            answer["jwks"] = client.jwks
        if client.jwks_uri is not None:
            answer["jwks_uri"] = client.jwks_uri
        return answer
