"""private_key_jwt client authentication (RFC 7523 §2.2 and §3, OpenID Connect Core §9)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from client_lib.exceptions import InvalidSignature, InvalidToken
from client_lib.jose import ASSERTION_TYPE as ASSERTION_TYPE  # the name the authenticator knows it by
from client_lib.jose import ClaimCheck, CompactJws, JwkError, VerificationKey, checked_jwk_set, key_algorithms, parse_jws, verify_signature

from . import db
from .clients import Client
from .errors import InvalidClient, TemporarilyUnavailable
from .fetcher import FetchError, RemoteCache

NOUN = "client_assertion"
# RFC 7523 §3: the claims an assertion must carry; jti a non-empty string.
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp")
STRING_CLAIMS = ("jti",)


# Built once: with DPoP every token request records a proof, and building the statements each time cost more
# than running them.
_RECORD = db.used_assertions.insert()
_PURGE = db.used_assertions.delete().where(db.used_assertions.c.expires_at < sa.bindparam("before"))


PURGE_EVERY = 60.0


class ReplayCache:
    """Assertion ids (and DPoP proof ids) already used, per client (or key), kept until the assertion expires
    (RFC 7523 §3 item 7, RFC 9449 §11.1)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        self._purged_at = float("-inf")

    def first_use(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record the jti; False if it was seen before."""
        now = self.clock()
        # Expired entries go at most once a minute per process: a DELETE with every insert doubled its cost.
        purge = now - self._purged_at >= PURGE_EVERY
        if purge:
            self._purged_at = now
        try:
            with self.engine.begin() as conn:
                if purge:
                    conn.execute(_PURGE, {"before": now - db.PURGE_GRACE})
                conn.execute(_RECORD, {"client_id": client_id, "jti": jti, "expires_at": expires_at})
        except sa.exc.IntegrityError:
            return False
        return True


class RedisReplayCache:
    """The same replay cache in Redis (SET NX until the entry's expiry), shared by every instance.

    Entries must survive a Redis restart: run it with persistence (`appendonly yes`), or keep the
    replay cache in the database."""

    def __init__(self, url: str):
        import redis  # noqa: PLC0415 (only when configured)

        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.errors = redis.RedisError

    def first_use(self, client_id: str, jti: str, expires_at: float) -> bool:
        # An absolute expiry: Redis's clock decides, not that of a worker whose clock may have jumped.
        try:
            return bool(self.redis.set(f"tokendealer:assertion:{client_id}:{jti}", b"1", nx=True, exat=int(expires_at) + 1))
        except self.errors:
            raise TemporarilyUnavailable("the replay cache is not available; retry shortly", headers={"Retry-After": "1"}) from None


class AssertionVerifier:
    """Checks a client assertion against the client's registered keys (RFC 7523 §3)."""

    def __init__(
        self,
        audiences: tuple[str, ...],
        replay: ReplayCache | RedisReplayCache,
        max_lifetime: int,
        leeway: int,
        clock: Callable[[], float] = time.time,
        fetcher: RemoteCache | None = None,
    ):
        self.audiences = audiences
        self.replay = replay
        self.max_lifetime = max_lifetime
        self.leeway = leeway
        self.clock = clock
        self.fetcher = fetcher or RemoteCache(checked_jwk_set)
        self.claims = ClaimCheck(required=REQUIRED_CLAIMS, strings=STRING_CLAIMS, leeway=leeway, noun=NOUN)

    @staticmethod
    def claimed_client_id(assertion: str) -> str:
        """The `sub` (falling back to `iss`) an assertion claims, before any check."""
        try:
            claims = parse_jws(assertion, noun=NOUN).unverified_claims()
        except InvalidToken as exc:
            raise InvalidClient(str(exc)) from None
        client_id = claims.get("sub") or claims.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise InvalidClient("client_assertion has no sub claim")
        return client_id

    def verify(self, client: Client, assertion: str) -> dict[str, Any]:
        """The assertion's claims if it proves `client`; else raise InvalidClient saying what failed."""
        try:
            jws = parse_jws(assertion, noun=NOUN)
            claims = self._verify_signature(client, jws)
            self._check_claims(client, claims)
        except InvalidToken as exc:
            raise InvalidClient(str(exc)) from None
        if not self.replay.first_use(client.client_id, claims["jti"], self.replay_until(claims["exp"])):
            raise InvalidClient("client_assertion jti was already used")
        return claims

    def replay_until(self, exp: float) -> float:
        """How long a jti must be remembered: while an assertion with this `exp` could still be accepted."""
        return exp + self.leeway

    def registered_keys(self, client: Client, force: bool = False) -> dict[str, Any] | None:
        """The client's JWK Set: registered, or from its jwks_uri through the hardened fetcher."""
        if client.jwks or not client.jwks_uri:
            return client.jwks
        try:
            return self.fetcher.get(client.jwks_uri, force)
        except FetchError:
            raise InvalidClient("the client's jwks_uri could not be fetched") from None

    def _candidate_keys(self, client: Client, jws: CompactJws, force: bool) -> list[dict[str, Any]]:
        jwks = self.registered_keys(client, force)
        if not jwks:
            raise InvalidClient("client has no registered keys for private_key_jwt")
        kid = jws.kid
        return [k for k in jwks["keys"] if (kid is None or k.get("kid") == kid) and jws.alg in key_algorithms(k)]

    def _verify_signature(self, client: Client, jws: CompactJws) -> dict[str, Any]:
        keys = self._candidate_keys(client, jws, force=False)
        if not keys and client.jwks_uri:
            keys = self._candidate_keys(client, jws, force=True)
        if not keys:
            raise InvalidClient("client_assertion is not signed by a key registered for this client")
        for jwk in keys:
            try:
                return verify_signature(jws, VerificationKey.from_jwk(jwk))
            except (InvalidSignature, JwkError):
                continue
        raise InvalidClient("client_assertion signature does not verify with the client's keys")

    def _check_claims(self, client: Client, claims: dict[str, Any]) -> None:
        """RFC 7523 §3: the shared claim checks, then what only an assertion must satisfy."""
        self.claims.check(claims, self.clock())
        if claims["iss"] != client.client_id or claims["sub"] != client.client_id:
            raise InvalidClient("client_assertion iss and sub must both be the client_id")
        # RFC 7523bis / the OAuth security BCP: the audience names this server and nothing else, so an
        # assertion made for another party cannot be spent here.
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str) or aud not in self.audiences:
            raise InvalidClient("client_assertion aud must be exactly the token endpoint URL or the issuer")
        if len(claims["jti"]) > 256:
            raise InvalidClient("client_assertion jti is longer than 256 characters")
        if claims["exp"] > self.clock() + self.max_lifetime + self.leeway:
            raise InvalidClient(f"client_assertion exp is more than {self.max_lifetime} seconds ahead")
