"""Trusted external issuers (SPEC §4.1): the registry of OIDC issuers whose workload tokens clients may trust,
and their signing keys, had through OIDC discovery → `jwks_uri` (or a JWK Set given when the issuer was added)
by the hardened fetcher."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from client_lib.jose import JwkError, VerificationKey

from . import db
from .fetcher import FetchError, RemoteCache, get_json

DISCOVERY_PATH = "/.well-known/openid-configuration"
# The longest unknown issuer name whose absence is remembered (`IssuerStore.get`).
MAX_REMEMBERED_UNKNOWN = 256
_Keys = tuple[VerificationKey, ...]


class IssuerError(Exception):
    """An issuer cannot be trusted as asked (bad URL, discovery failed, bad JWK Set, unknown issuer)."""


class IssuerNotFound(IssuerError):
    """No such trusted issuer."""


@dataclass(frozen=True)
class TrustedIssuer:
    """An external issuer: its exact `iss` value, and where its keys come from."""

    issuer: str
    jwks_uri: str | None = None  # what discovery named when the issuer was added (informational)
    jwks: dict[str, Any] | None = None  # keys given with --jwks: no fetch at all
    allow_http: bool = False
    created_at: float = 0.0

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_PATH

    def view(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "keys": "jwks" if self.jwks else "discovery",
            "jwks_uri": self.jwks_uri,
            "kids": [k.get("kid") for k in self.jwks["keys"]] if self.jwks else None,
            "allow_http": self.allow_http,
            "created_at": self.created_at,
        }


def is_loopback(url: str) -> bool:
    """Whether `url`'s host is loopback (plain http is allowed there, as for this server's own issuer)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_http: bool, what: str = "the issuer") -> str:
    """An absolute https URL without query or fragment; http only on loopback or with `allow_http`."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise IssuerError(f"{what} must be an absolute https URL without query or fragment")
    if parts.scheme == "http" and not (allow_http or is_loopback(url)):
        raise IssuerError(f"{what} must use https (plain http only on loopback, or with --allow-http)")
    return url


def usable_keys(jwks: Any) -> dict[str, Any]:
    """An external issuer's JWK Set keeping only the public signature keys usable here (issuers publish keys
    of other kinds too); ValueError when it is not a JWK Set or none is left."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError('a JWK Set must be a JSON object {"keys": [...]}')
    keys = []
    for jwk in jwks["keys"]:
        try:
            VerificationKey.from_jwk(jwk)
        except JwkError:
            continue
        keys.append(jwk)
    if not keys:
        raise ValueError("the JWK Set holds no usable public signature key")
    return {"keys": keys}


def discovered(issuer: TrustedIssuer, metadata: Any) -> str:
    """The `jwks_uri` of an issuer's OIDC discovery document, whose `issuer` must be exactly the trusted one
    (OpenID Connect Discovery §4.3), and which is https unless the issuer itself may be http."""
    if not isinstance(metadata, dict):
        raise ValueError("the discovery document is not a JSON object")
    named = metadata.get("issuer")
    if named != issuer.issuer:
        # Shown to whoever adds the issuer, so a trailing `/` or a wrong host is seen at once; never to a token requester.
        # Only a string is quoted, and only its start: a remote's nested value is named by its type, not echoed.
        told = f"{named[:200]!r}" if isinstance(named, str) else f"a JSON {type(named).__name__}" if named is not None else "no issuer"
        raise ValueError(f"the discovery document names {told}, not exactly the trusted issuer {issuer.issuer!r}")
    jwks_uri = metadata.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise ValueError("the discovery document has no jwks_uri")
    try:
        check_url(jwks_uri, issuer.allow_http, "jwks_uri")
    except IssuerError as exc:
        raise ValueError(str(exc)) from None
    return jwks_uri


class IssuerStore:
    """The `trusted_issuers` table, with a read cache bounded in staleness like the client registry's."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time, cache_seconds: float = 0.0):
        self.engine = engine
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, TrustedIssuer | None]] = {}
        self._lock = threading.Lock()

    def get(self, issuer: str) -> TrustedIssuer | None:
        now = time.monotonic()
        hit = self._cache.get(issuer) if self.cache_seconds else None
        if hit and hit[0] > now:
            return hit[1]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.trusted_issuers).where(db.trusted_issuers.c.issuer == issuer)).first()
        found = TrustedIssuer(**row._mapping) if row else None
        # An unknown issuer is whatever a made-up token names (read before its signature is checked): only a
        # short one is remembered, so 10 000 of them hold a few MB, not ~120 MB of 12 KB names.
        if self.cache_seconds and (found is not None or len(issuer) <= MAX_REMEMBERED_UNKNOWN):
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[issuer] = (now + self.cache_seconds, found)
        return found

    def list(self) -> list[TrustedIssuer]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(db.trusted_issuers).order_by(db.trusted_issuers.c.issuer)).all()
        return [TrustedIssuer(**r._mapping) for r in rows]

    def add(self, issuer: str, jwks: dict[str, Any] | None = None, allow_http: bool = False, deadline: float = 5.0) -> TrustedIssuer:
        """Trust `issuer`: with `jwks`, those keys; else its discovery document is fetched now, so a typo or an
        unreachable issuer is refused at once rather than at the first token request."""
        check_url(issuer, allow_http)
        record = TrustedIssuer(issuer=issuer, allow_http=allow_http, created_at=self.clock())
        if jwks is not None:
            try:
                record = TrustedIssuer(issuer, None, usable_keys(jwks), allow_http, record.created_at)
            except ValueError as exc:
                raise IssuerError(f"--jwks: {exc}") from None
        else:
            try:
                jwks_uri = discovered(record, get_json(record.discovery_url, deadline))
                usable_keys(get_json(jwks_uri, deadline))
            except FetchError as exc:
                hint = "give its keys instead (`--jwks FILE`, or `jwks` in an apply file) if it is not reachable"
                raise IssuerError(f"discovery at {record.discovery_url}: {exc}; {hint}") from None
            except ValueError as exc:  # it answered, with something that is not this issuer's discovery or keys
                raise IssuerError(f"discovery at {record.discovery_url}: {exc}") from None
            record = TrustedIssuer(issuer, jwks_uri, None, allow_http, record.created_at)
        row = dataclasses.asdict(record)
        with self.engine.begin() as conn:
            conn.execute(db.trusted_issuers.delete().where(db.trusted_issuers.c.issuer == issuer))
            conn.execute(db.trusted_issuers.insert().values(**row))
        return record

    def remove(self, issuer: str) -> int:
        """Stop trusting `issuer`, with the federation rules that name it; how many rules went."""
        with self.engine.begin() as conn:
            if not conn.execute(db.trusted_issuers.delete().where(db.trusted_issuers.c.issuer == issuer)).rowcount:
                raise IssuerNotFound(f"no trusted issuer {issuer!r}")
            return conn.execute(db.federation_rules.delete().where(db.federation_rules.c.issuer == issuer)).rowcount


class IssuerKeys:
    """The signing keys of trusted issuers, through two `RemoteCache`s (discovery documents and JWK Sets): an
    overall deadline, a size cap, no redirects, cached failures, the last good keys while an issuer is down,
    and a refetch for an unknown `kid` at most once per cooldown."""

    def __init__(self, ttl: float = 300.0, cooldown: float = 30.0, deadline: float = 5.0, wait: float = 1.0):
        self.documents = RemoteCache(lambda value: value, ttl=ttl, cooldown=cooldown, deadline=deadline, wait=wait)
        self.jwks = RemoteCache(usable_keys, ttl=ttl, cooldown=cooldown, deadline=deadline, wait=wait)
        # Both kept per object the caches hand out (the same one until they refetch), so a request that checks a
        # signature neither re-reads a discovery document nor parses a key:
        # (issuer, allow_http) -> (discovery document, its jwks_uri);
        self._jwks_uris: dict[tuple[str, bool], tuple[Any, str]] = {}
        # id(JWK Set) -> (the JWK Set, its keys by kid, and (kid, alg) -> the keys that match, once asked).
        self._parsed: dict[int, tuple[dict[str, Any], list[tuple[Any, VerificationKey]], dict[tuple[str | None, str], _Keys]]] = {}

    def candidates(self, issuer: TrustedIssuer, kid: str | None, alg: str) -> _Keys:
        """The public keys of `issuer` that may have signed with (`kid`, `alg`); an unknown kid refetches the
        keys once per cooldown. FetchError (or ValueError) when the issuer's keys cannot be had."""
        jwks = issuer.jwks or self._fetched(issuer, force=False)
        keys = self._keys(jwks, kid, alg)
        if not keys and not issuer.jwks:
            keys = self._keys(self._fetched(issuer, force=True), kid, alg)
        return keys

    def _fetched(self, issuer: TrustedIssuer, force: bool) -> dict[str, Any]:
        document = self.documents.get(issuer.discovery_url)
        known = self._jwks_uris.get((issuer.issuer, issuer.allow_http))
        if known is not None and known[0] is document:
            jwks_uri = known[1]
        else:
            jwks_uri = discovered(issuer, document)
            if len(self._jwks_uris) > 1000:
                self._jwks_uris.clear()
            self._jwks_uris[(issuer.issuer, issuer.allow_http)] = (document, jwks_uri)
        return self.jwks.get(jwks_uri, force)

    def _keys(self, jwks: dict[str, Any], kid: str | None, alg: str) -> _Keys:
        """The keys by kid that allow `alg`, parsed once per JWK Set object (the cache hands out the same one
        until it refetches), so a request verifies a signature without parsing a key."""
        entry = self._parsed.get(id(jwks))
        if entry is None or entry[0] is not jwks:
            if len(self._parsed) > 1000:
                self._parsed.clear()
            keys = [(k.get("kid"), VerificationKey.from_jwk(k)) for k in usable_keys(jwks)["keys"]]
            entry = self._parsed[id(jwks)] = (jwks, keys, {})
        found = entry[2].get((kid, alg))
        if found is None:
            found = tuple(key for key_id, key in entry[1] if (kid is None or key_id == kid) and alg in key.algorithms)
            if found:  # only what some key answers is kept: an unknown kid (a kid flood) adds nothing
                entry[2][(kid, alg)] = found
        return found
