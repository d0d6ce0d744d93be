"""private_key_jwt client authentication (RFC 7523 §2.2 and §3, OpenID Connect Core §9)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import db
from .clients import Client, ClientError
from .errors import InvalidClient, TemporarilyUnavailable
from .fetcher import FetchError, RemoteCache
from .keyring import ALGORITHMS

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k", "oth")
_ALGS_BY_KEY = {("EC", "P-256"): ("ES256",), ("RSA", None): ("RS256", "RS512", "PS256"), ("OKP", "Ed25519"): ("EdDSA",)}


def key_algorithms(jwk: dict[str, Any]) -> tuple[str, ...]:
    """The algorithms a registered JWK may verify: its `alg` if given, else those its key type allows."""
    allowed = _ALGS_BY_KEY.get((jwk.get("kty"), jwk.get("crv") if jwk.get("kty") != "RSA" else None), ())
    if "alg" in jwk:
        return (jwk["alg"],) if jwk["alg"] in allowed else ()
    return allowed


def usable_jwks(jwks: Any) -> dict[str, Any]:
    """Check a client's JWK Set: public asymmetric keys only, each usable with an accepted algorithm."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ClientError('a JWK Set must be a JSON object {"keys": [...]} with at least one key')
    keys = []
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict):
            raise ClientError("each JWK must be a JSON object")
        if any(member in jwk for member in _PRIVATE_MEMBERS):
            raise ClientError("the JWK Set holds private or symmetric key material; register public keys only")
        if not key_algorithms(jwk):
            raise ClientError(f"unsupported key (kty {jwk.get('kty')!r}, alg {jwk.get('alg')!r}); use {', '.join(ALGORITHMS)}")
        try:
            jwt.PyJWK(jwk, key_algorithms(jwk)[0])
        except jwt.PyJWKError:
            raise ClientError("a JWK in the set is malformed") from None
        keys.append(jwk)
    return {"keys": keys}


class ReplayCache:
    """Assertion ids already used, per client, kept until the assertion expires (RFC 7523 §3 item 7)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock

    def first_use(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record the jti; False if it was seen before."""
        try:
            with self.engine.begin() as conn:
                conn.execute(db.used_assertions.delete().where(db.used_assertions.c.expires_at < self.clock() - db.PURGE_GRACE))
                conn.execute(db.used_assertions.insert().values(client_id=client_id, jti=jti, expires_at=expires_at))
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
        self.fetcher = fetcher or RemoteCache(usable_jwks)

    @staticmethod
    def claimed_client_id(assertion: str) -> str:
        """The `sub` (falling back to `iss`) an assertion claims, before any check."""
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise InvalidClient("client_assertion is not a well-formed JWT") from None
        client_id = claims.get("sub") or claims.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise InvalidClient("client_assertion has no sub claim")
        return client_id

    def verify(self, client: Client, assertion: str) -> dict[str, Any]:
        """The assertion's claims if it proves `client`; else raise InvalidClient saying what failed."""
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError:
            raise InvalidClient("client_assertion is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidClient(f"client_assertion algorithm {alg!r} is not accepted")
        claims = self._verify_signature(client, assertion, header, alg)
        self._check_claims(client, claims)
        if not self.replay.first_use(client.client_id, claims["jti"], self.replay_until(claims["exp"])):
            raise InvalidClient("client_assertion jti was already used")
        return claims

    def replay_until(self, exp: float) -> float:
        """How long a jti must be remembered: while an assertion with this `exp` could still be accepted."""
        return exp + self.leeway

    def _candidate_keys(self, client: Client, header: dict[str, Any], alg: str, force: bool) -> list[dict[str, Any]]:
        jwks = client.jwks
        if not jwks and client.jwks_uri:
            try:
                jwks = self.fetcher.get(client.jwks_uri, force)
            except FetchError:
                raise InvalidClient("the client's jwks_uri could not be fetched") from None
        if not jwks:
            raise InvalidClient("client has no registered keys for private_key_jwt")
        kid = header.get("kid")
        return [k for k in jwks["keys"] if (kid is None or k.get("kid") == kid) and alg in key_algorithms(k)]

    def _verify_signature(self, client: Client, assertion: str, header: dict[str, Any], alg: str) -> dict[str, Any]:
        keys = self._candidate_keys(client, header, alg, force=False)
        if not keys and client.jwks_uri:
            keys = self._candidate_keys(client, header, alg, force=True)
        if not keys:
            raise InvalidClient("client_assertion is not signed by a key registered for this client")
        for jwk in keys:
            try:
                return jwt.decode(
                    assertion,
                    jwt.PyJWK(jwk, alg).key,
                    algorithms=[alg],
                    options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False, "verify_iss": False},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError:
                raise InvalidClient("client_assertion is not a well-formed JWT") from None
        raise InvalidClient("client_assertion signature does not verify with the client's keys")

    def _check_claims(self, client: Client, claims: dict[str, Any]) -> None:
        for name in ("iss", "sub", "aud", "exp", "jti"):
            if name not in claims:
                raise InvalidClient(f"client_assertion lacks the {name} claim")
        if claims["iss"] != client.client_id or claims["sub"] != client.client_id:
            raise InvalidClient("client_assertion iss and sub must both be the client_id")
        # RFC 7523bis / the OAuth security BCP: the audience names this server and nothing else, so an
        # assertion made for another party cannot be spent here.
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str) or aud not in self.audiences:
            raise InvalidClient("client_assertion aud must be exactly the token endpoint URL or the issuer")
        if not isinstance(claims["jti"], str) or not claims["jti"] or len(claims["jti"]) > 256:
            raise InvalidClient("client_assertion jti must be a non-empty string")
        for name in ("exp", "iat", "nbf"):
            if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], (int, float))):
                raise InvalidClient(f"client_assertion {name} is not a number")
        now = self.clock()
        if claims["exp"] <= now - self.leeway:
            raise InvalidClient("client_assertion has expired")
        if claims["exp"] > now + self.max_lifetime + self.leeway:
            raise InvalidClient(f"client_assertion exp is more than {self.max_lifetime} seconds ahead")
        if claims.get("nbf", 0) > now + self.leeway:
            raise InvalidClient("client_assertion is not valid yet")
        if claims.get("iat", 0) > now + self.leeway:
            raise InvalidClient("client_assertion iat is in the future")
