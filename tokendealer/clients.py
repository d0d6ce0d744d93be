"""The client registry: records, secret generation and hashing, and a short-lived in-process cache."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from client_lib.jose import JwkError, checked_jwk_set

from . import db

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
# Claims the server sets itself; a client's extra claims may not shadow them (nor forge an RFC 8693 actor chain).
RESERVED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "auth_time", "acr", "amr", "cnf"}
    | {"act", "may_act", "exchanged_from"}
)
SECRET_BYTES = 32
# The longest an old secret may stay valid after a rotation: a rotation that never retires it is no rotation.
MAX_GRACE = 366 * 86400


class ClientError(Exception):
    """A registry request that cannot be done (unknown client, duplicate, bad field)."""


class ClientNotFound(ClientError):
    pass


class ClientExists(ClientError):
    """The client id is taken."""


class ClientChanged(ClientError):
    """The record changed between reading and writing it (another writer came first)."""


@dataclass(frozen=True)
class Client:
    """A registered service allowed to use the client-credentials grant."""

    client_id: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    default_scopes: tuple[str, ...] | None = None
    default_audience: str | None = None
    token_ttl: int | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    enabled: bool = True
    secret_hash: str | None = field(default=None, repr=False)
    previous_secret_hash: str | None = field(default=None, repr=False)
    previous_secret_expires_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    tokens_not_before: float | None = None
    # RFC 8693: the audience identities this client serves (tokens meant for them it may exchange) and
    # the audiences it may exchange them for.
    serves: tuple[str, ...] = ()
    exchange_audiences: tuple[str, ...] = ()
    # RFC 9449: every token request must carry a DPoP proof. RFC 8705 §2.1: the certificate subject DN, or
    # one subjectAltName (URI or DNS), that authenticates a tls_client_auth client.
    require_dpop: bool = False
    tls_subject: str | None = None
    tls_san: str | None = None

    def owns_token_issued_at(self, iat: float) -> bool:
        """False for a token issued to an earlier client under the same id (deleted, then re-created)."""
        return self.tokens_not_before is None or iat > self.tokens_not_before

    @property
    def auth_method(self) -> str:
        """How the client proves itself: a secret, its own keys, or else only federation (or a certificate)."""
        if self.secret_hash:
            return "client_secret"
        if self.tls_subject or self.tls_san:
            return "tls_client_auth"
        return "private_key_jwt" if self.jwks or self.jwks_uri else "federated"

    def granted_scopes(self) -> tuple[str, ...]:
        """Scopes a token gets when the request names none."""
        return self.scopes if self.default_scopes is None else self.default_scopes

    def granted_audience(self) -> str | None:
        """Audience a token gets when the request names none."""
        if self.default_audience:
            return self.default_audience
        return self.audiences[0] if len(self.audiences) == 1 else None

    def public_view(self) -> dict[str, Any]:
        """The record without secret material, for `client show` and `client list`."""
        data = asdict(self)
        for name in ("secret_hash", "previous_secret_hash"):
            data.pop(name)
        data["scopes"] = list(self.scopes)
        data["audiences"] = list(self.audiences)
        data["default_scopes"] = None if self.default_scopes is None else list(self.default_scopes)
        data["serves"] = list(self.serves)
        data["exchange_audiences"] = list(self.exchange_audiences)
        data["auth_method"] = self.auth_method
        return data


def parse_scopes(values: Iterable[str]) -> tuple[str, ...]:
    """Split space-separated scope values, check each token (RFC 6749 §3.3), keep order, drop repeats."""
    out: list[str] = []
    for value in values:
        for token in value.split():
            if not SCOPE_TOKEN_RE.match(token):
                raise ClientError(f"invalid scope {token!r}")
            if token not in out:
                out.append(token)
    return tuple(out)


def check_audience(value: str) -> str:
    """An audience is a non-empty printable string without spaces; URIs must be absolute."""
    if not value or len(value) > 2048 or not SCOPE_TOKEN_RE.match(value):
        raise ClientError(f"invalid audience {value!r}")
    if ":" in value and not urlsplit(value).scheme:
        raise ClientError(f"invalid audience {value!r}")
    return value


def parse_claims(items: Iterable[str]) -> dict[str, Any]:
    """`k=v` pairs; v is read as JSON when it parses (numbers, booleans, lists), else kept as text."""
    claims: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ClientError(f"claim {item!r} is not of the form name=value")
        if name in RESERVED_CLAIMS:
            raise ClientError(f"claim {name!r} is set by the server and cannot be registered")
        try:
            claims[name] = json.loads(text)
        except ValueError:
            claims[name] = text
    return claims


def check_jwks(jwks: Any) -> dict[str, Any]:
    """A public JWK Set usable for private_key_jwt (RFC 7523): public signing keys of accepted types only."""
    try:
        return checked_jwk_set(jwks)
    except JwkError as exc:
        raise ClientError(str(exc)) from None


class SecretHasher:
    """Keyed hash of client secrets: HMAC-SHA256 under a server-side pepper.

    Secrets are 256-bit random values, so a slow password hash adds no protection and would cap
    throughput; the pepper keeps a stolen database from being enough to test guesses offline.
    """

    def __init__(self, pepper: bytes | Callable[[], bytes]):
        self._load = pepper if callable(pepper) else lambda: pepper
        # HMAC's state once keyed with the pepper: each hash copies it (the key's two blocks are not hashed again).
        self._keyed: hmac.HMAC | None = None

    def hash(self, secret: str) -> str:
        if self._keyed is None:
            # Read at first use: a worker started while the keyring is unreadable answers 503, it does not die.
            self._keyed = hmac.new(self._load(), digestmod=hashlib.sha256)
        mac = self._keyed.copy()
        mac.update(secret.encode("utf-8"))
        return mac.hexdigest()

    def matches(self, client: Client, secret: str, now: float) -> bool:
        """Constant-time check of `secret` against the current and, during its grace, the previous secret."""
        presented = self.hash(secret)
        ok = hmac.compare_digest(presented, client.secret_hash or "")
        if client.previous_secret_hash and (client.previous_secret_expires_at or 0) > now:
            ok |= hmac.compare_digest(presented, client.previous_secret_hash)
        return ok


def new_secret() -> str:
    """A fresh client secret: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(SECRET_BYTES)


# Client ids per query when the cache is refreshed, and how long after its last use a client is kept fresh.
REFRESH_CHUNK = 500
KEEP_WARM = 30.0


class ClientStore:
    """CRUD for client records on a SQLAlchemy engine, with a cache bounded in staleness for reads."""

    def __init__(
        self,
        engine: Engine,
        hasher: SecretHasher,
        clock: Callable[[], float] = time.time,
        cache_seconds: float = 0.0,
        max_token_ttl: int | None = None,
    ):
        self.engine = engine
        self.hasher = hasher
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.max_token_ttl = max_token_ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}
        self._cache_lock = threading.Lock()
        self._used: dict[str, float] = {}  # cached id -> when it was last asked for (time.monotonic())

    def get(self, client_id: str, cached: bool = True) -> Client | None:
        """The client, or None; a cached read is at most `cache_seconds` old."""
        now = time.monotonic()
        if cached and self.cache_seconds:
            hit = self._cache.get(client_id)
            if hit and hit[0] > now:
                self._used[client_id] = now
                return hit[1]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.clients).where(db.clients.c.client_id == client_id)).first()
        client = _from_row(row) if row else None
        if self.cache_seconds and CLIENT_ID_RE.match(client_id):
            with self._cache_lock:
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[client_id] = (now + self.cache_seconds, client)
                self._used[client_id] = now
        return client

    def refresh_cached(self) -> int:
        """Re-read, a few hundred per query, the cached clients asked for in the last `KEEP_WARM` seconds,
        so that requests find them fresh rather than each reading its own when it expires (one query per
        client per `cache_seconds` with many active clients); the others are left to expire. Returns how many."""
        now = time.monotonic()  # before the reads: what they see is then at most cache_seconds old at expiry
        used = self._used.copy()
        ids = [client_id for client_id, at in used.items() if at > now - KEEP_WARM and client_id in self._cache]
        for client_id, at in used.items():
            if at <= now - KEEP_WARM:
                self._used.pop(client_id, None)
        found: dict[str, Client] = {}
        for start in range(0, len(ids), REFRESH_CHUNK):
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(db.clients).where(db.clients.c.client_id.in_(ids[start : start + REFRESH_CHUNK]))).all()
            found.update((row.client_id, _from_row(row)) for row in rows)
        with self._cache_lock:
            for client_id in ids:
                self._cache[client_id] = (now + self.cache_seconds, found.get(client_id))
        return len(ids)

    def refresh_in_background(self) -> None:
        """A daemon thread calling `refresh_cached` every half `cache_seconds` (`tokendealer serve`'s workers)."""

        def run() -> None:
            while True:
                time.sleep(self.cache_seconds / 2)
                try:
                    self.refresh_cached()
                except sa.exc.SQLAlchemyError:
                    pass  # the database is down: entries expire and requests read (and answer 503) themselves

        if self.cache_seconds:
            threading.Thread(target=run, name="client-refresh", daemon=True).start()

    def validate(self, client: Client) -> None:
        """Refuse a record the registry would not hold, writing nothing (`tokendealer apply` checks a whole file
        before its first change): the rules every create and update passes."""
        self._check(client)

    def require(self, client_id: str) -> Client:
        client = self.get(client_id, cached=False)
        if client is None:
            raise ClientNotFound(f"no client {client_id!r}")
        return client

    def list(self, after: str | None = None, limit: int | None = None) -> list[Client]:
        """Clients in client_id order; `after` and `limit` page through them (keyset pagination)."""
        query = sa.select(db.clients).order_by(db.clients.c.client_id)
        if after is not None:
            query = query.where(db.clients.c.client_id > after)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_from_row(r) for r in rows]

    def create(
        self,
        client_id: str,
        scopes: Iterable[str] = (),
        audiences: Iterable[str] = (),
        default_scopes: Iterable[str] | None = None,
        default_audience: str | None = None,
        token_ttl: int | None = None,
        claims: dict[str, Any] | None = None,
        jwks: dict[str, Any] | None = None,
        jwks_uri: str | None = None,
        serves: Iterable[str] = (),
        exchange_audiences: Iterable[str] = (),
        require_dpop: bool = False,
        tls_subject: str | None = None,
        tls_san: str | None = None,
        no_secret: bool = False,
    ) -> tuple[Client, str | None]:
        """Register a client; returns it and its secret (None for a client authenticated by its keys, or by
        federation only with `no_secret`)."""
        if not CLIENT_ID_RE.match(client_id):
            raise ClientError("client name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
        now = self.clock()
        keyless = jwks is None and not jwks_uri and not tls_subject and not tls_san
        secret = new_secret() if keyless and not no_secret else None
        with self.engine.connect() as conn:
            deleted_at = conn.execute(
                sa.select(db.client_tombstones.c.deleted_at).where(db.client_tombstones.c.client_id == client_id)
            ).scalar()
        client = Client(
            client_id=client_id,
            scopes=parse_scopes(scopes),
            audiences=tuple(check_audience(a) for a in audiences),
            default_scopes=None if default_scopes is None else parse_scopes(default_scopes),
            default_audience=default_audience,
            token_ttl=token_ttl,
            claims=dict(claims or {}),
            jwks=check_jwks(jwks) if jwks is not None else None,
            jwks_uri=jwks_uri,
            secret_hash=self.hasher.hash(secret) if secret else None,
            created_at=now,
            updated_at=now,
            tokens_not_before=deleted_at,
            serves=tuple(check_audience(a) for a in serves),
            exchange_audiences=tuple(check_audience(a) for a in exchange_audiences),
            require_dpop=bool(require_dpop),
            tls_subject=tls_subject or None,
            tls_san=tls_san or None,
        )
        self._check(client)
        try:
            with self.engine.begin() as conn:
                conn.execute(db.clients.insert().values(**_to_row(client)))
        except sa.exc.IntegrityError:
            raise ClientExists(f"client {client_id!r} already exists") from None
        return client, secret

    def update(self, client_id: str, check: Callable[[Client], None] | None = None, **changes: Any) -> Client:
        """Replace the fields given (a repeated option replaces the whole list); `check` may refuse the record
        as read (a stale ETag), and a record changed by another writer meanwhile raises ClientChanged."""
        client = self.require(client_id)
        if check:
            check(client)
        if "scopes" in changes:
            changes["scopes"] = parse_scopes(changes["scopes"])
        if changes.get("default_scopes") is not None:
            changes["default_scopes"] = parse_scopes(changes["default_scopes"])
        for name in ("audiences", "serves", "exchange_audiences"):
            if name in changes:
                changes[name] = tuple(check_audience(a) for a in changes[name])
        if changes.get("jwks") is not None:
            changes["jwks"] = check_jwks(changes["jwks"])
        if client.secret_hash and (changes.get("jwks") or changes.get("jwks_uri")):
            raise ClientError("a secret client cannot take keys; create a new client for private_key_jwt")
        if client.secret_hash and (changes.get("tls_subject") or changes.get("tls_san")):
            raise ClientError("a secret client cannot take a certificate identity; create a new client for tls_client_auth")
        if replace(client, **changes) == client:
            return client  # nothing differs: no write, so the record's version (and ETag) stays
        updated = replace(client, **changes, updated_at=self._next_update(client))
        self._check(updated)
        self._save(updated, client.updated_at)
        return updated

    def set_enabled(self, client_id: str, enabled: bool) -> Client:
        before = self.require(client_id)
        client = replace(before, enabled=enabled, updated_at=self._next_update(before))
        self._save(client, before.updated_at)
        return client

    def delete(self, client_id: str, check: Callable[[Client], None] | None = None) -> None:
        """Delete the client, leaving a tombstone so that its tokens stay dead if the id is re-used; `check`
        may refuse the record as read, and one changed meanwhile raises ClientChanged."""
        where = db.clients.c.client_id == client_id
        if check:
            client = self.require(client_id)
            check(client)
            where = sa.and_(where, db.clients.c.updated_at == client.updated_at)
        with self.engine.begin() as conn:
            count = conn.execute(db.clients.delete().where(where)).rowcount
            if not count and check:
                raise ClientChanged(f"client {client_id!r} changed meanwhile; read it again")
            if not count:
                raise ClientNotFound(f"no client {client_id!r}")
            tombstone = db.client_tombstones
            conn.execute(tombstone.delete().where(tombstone.c.client_id == client_id))
            conn.execute(tombstone.insert().values(client_id=client_id, deleted_at=self.clock()))
            # Its federation rules go too, so an id created again does not inherit who may act as it.
            conn.execute(db.federation_rules.delete().where(db.federation_rules.c.client_id == client_id))
            # And its RFC 7592 registration access token, which must not manage a later client of that id.
            conn.execute(db.registrations.delete().where(db.registrations.c.client_id == client_id))
        self._forget(client_id)

    def rotate_secret(self, client_id: str, grace: int = 0) -> tuple[Client, str]:
        """A new secret; the old one stays valid for `grace` seconds."""
        client = self.require(client_id)
        if not client.secret_hash:
            raise ClientError(f"client {client_id!r} has no secret (it authenticates by {client.auth_method})")
        if grace < 0:
            raise ClientError("--grace must not be negative")
        if grace > MAX_GRACE:
            raise ClientError(f"--grace must be at most {MAX_GRACE} seconds (366 days)")
        now = self.clock()
        secret = new_secret()
        rotated = replace(
            client,
            secret_hash=self.hasher.hash(secret),
            previous_secret_hash=client.secret_hash if grace else None,
            previous_secret_expires_at=now + grace if grace else None,
            updated_at=self._next_update(client),
        )
        self._save(rotated, client.updated_at)
        return rotated, secret

    def _next_update(self, client: Client) -> float:
        """The new updated_at: the clock, but always past the old value, so every write changes the ETag and
        the compare-and-set in `_save` tells writes apart even within one clock tick."""
        return max(self.clock(), client.updated_at + 1e-6)

    def _check(self, client: Client) -> None:
        if not client.audiences:
            raise ClientError("a client needs at least one --audience")
        if client.default_scopes is not None and not set(client.default_scopes) <= set(client.scopes):
            raise ClientError("--default-scope must be among the client's --scope values")
        if client.default_audience is not None and client.default_audience not in client.audiences:
            raise ClientError("--default-audience must be one of the client's --audience values")
        if client.token_ttl is not None:
            if client.token_ttl <= 0:
                raise ClientError("--ttl must be a positive number of seconds")
            if self.max_token_ttl and client.token_ttl > self.max_token_ttl:
                raise ClientError(f"--ttl must not exceed the maximum token lifetime ({self.max_token_ttl} s)")
        if client.jwks_uri is not None and urlsplit(client.jwks_uri).scheme not in ("https", "http"):
            raise ClientError("--jwks-uri must be an http(s) URL")
        if client.tls_subject and client.tls_san:
            raise ClientError("give either --tls-subject or --tls-san, not both")
        for name, value in (("--tls-subject", client.tls_subject), ("--tls-san", client.tls_san)):
            if value is not None and (not value.strip() or len(value) > 2048 or not value.isprintable()):
                raise ClientError(f"{name} must be a non-empty printable string")
        if client.tls_subject:
            from .mtls import parse_dn  # noqa: PLC0415 (mtls reaches clients through http and tokens)

            try:
                parse_dn(client.tls_subject)
            except ValueError as exc:
                raise ClientError(f"--tls-subject {exc}") from None
        bad = RESERVED_CLAIMS & set(client.claims)
        if bad:
            raise ClientError(f"claim {sorted(bad)[0]!r} is set by the server and cannot be registered")

    def _save(self, client: Client, read_at: float) -> None:
        """Write the record unless another writer changed it since it was read (its updated_at moved on)."""
        row = _to_row(client)
        table = db.clients
        with self.engine.begin() as conn:
            count = conn.execute(
                table.update().where(table.c.client_id == client.client_id, table.c.updated_at == read_at).values(**row)
            ).rowcount
        self._forget(client.client_id)
        if not count:
            raise ClientChanged(f"client {client.client_id!r} changed meanwhile; read it again")

    def _forget(self, client_id: str) -> None:
        with self._cache_lock:
            self._cache.pop(client_id, None)


def _to_row(client: Client) -> dict[str, Any]:
    row = asdict(client)
    row["scopes"] = list(client.scopes)
    row["audiences"] = list(client.audiences)
    row["default_scopes"] = None if client.default_scopes is None else list(client.default_scopes)
    row["serves"] = list(client.serves)
    row["exchange_audiences"] = list(client.exchange_audiences)
    return row


def _from_row(row: Any) -> Client:
    data = dict(row._mapping)
    data["scopes"] = tuple(data["scopes"])
    data["audiences"] = tuple(data["audiences"])
    if data["default_scopes"] is not None:
        data["default_scopes"] = tuple(data["default_scopes"])
    data["serves"] = tuple(data["serves"] or ())
    data["exchange_audiences"] = tuple(data["exchange_audiences"] or ())
    return Client(**data)
