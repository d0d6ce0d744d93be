"""The I/O-free core shared by the sync and async shells: token-cache and JWKS-cache decisions, and
the checks that make a JWT an acceptable access token. Nothing here performs network I/O."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from .exceptions import (
    ActorNotAllowed,
    DisallowedAlgorithm,
    DiscoveryError,
    ExpiredToken,
    ImmatureToken,
    InsufficientScope,
    InvalidSignature,
    KeySetUnavailable,
    MalformedToken,
    MissingClaim,
    TokenEndpointUnavailable,
    TokenRequestError,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASYMMETRIC_ALGORITHMS = ("ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
MAX_JSON_DEPTH = 32  # deeper token JSON is refused, so nothing recurses on what an attacker nests
REFRESH_MARGIN = 300.0
DEFAULT_PORTS = {"http": 80, "https": 443}
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_SIGNATURE_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_JWA = get_default_algorithms()
_MAX_AGE_RE = re.compile(r"(?:^|,)\s*(s-)?max-age\s*=\s*\"?(\d+)", re.I)
_ALGS_BY_KEY = {
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("RSA", None): ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    ("OKP", "Ed25519"): ("EdDSA",),
}


# ---- tokens held by a client ------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedToken:
    """A token held by a client, with the moment it should be refreshed and the moment it is unusable."""

    access_token: str
    expires_at: float
    stale_at: float
    response: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_response(cls, response: dict[str, Any], now: float) -> CachedToken:
        """Stale at min(exp - 5 min, issued + lifetime/2), so a refresh starts well before expiry."""
        lifetime = float(response["expires_in"])
        expires_at = now + lifetime
        return cls(response["access_token"], expires_at, min(expires_at - REFRESH_MARGIN, now + lifetime / 2), response)

    def fresh(self, now: float) -> bool:
        return now < self.stale_at

    def usable(self, now: float) -> bool:
        return now < self.expires_at


def token_response(data: Any) -> dict[str, Any]:
    """Check a token endpoint's 200 body (RFC 6749 §5.1) and return it."""
    if not isinstance(data, dict) or not isinstance(data.get("access_token"), str) or not data["access_token"]:
        raise ValueError("response has no access_token")
    if str(data.get("token_type", "")).lower() != "bearer":
        raise ValueError("token_type is not Bearer")
    expires_in = data.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
        raise ValueError("expires_in is missing or not positive")
    return data


def backoff_delays(retries: int, base: float, cap: float, budget: float) -> Iterable[float]:
    """Exponential backoff with full jitter, stopping when the total budget is spent."""
    spent = 0.0
    for attempt in range(retries):
        delay = random.uniform(0, min(cap, base * 2**attempt))
        if spent + delay > budget:
            return
        spent += delay
        yield delay


def retry_after_seconds(value: str | None, default: float, cap: float) -> float:
    """A Retry-After header in seconds (delta form), bounded."""
    try:
        return min(cap, max(0.0, float(value))) if value else default
    except ValueError:
        return default


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


class RetrySchedule:
    """When to try a token request again: exponential backoff with jitter, honouring Retry-After,
    within a bounded count and total time. Raises TokenEndpointUnavailable once they are spent."""

    def __init__(self, endpoint: str, retries: int, base: float, budget: float):
        self.endpoint = endpoint
        self.budget = budget
        self._delays = iter(backoff_delays(retries, base, 5.0, budget))

    def next_wait(self, problem: str, retry_after: str | None = None) -> float:
        delay = next(self._delays, None)
        if delay is None:
            raise TokenEndpointUnavailable(f"token endpoint {self.endpoint} failed: {problem}")
        return max(delay, retry_after_seconds(retry_after, 0.0, self.budget))


def token_form(audience: str | None, scope: str | None) -> dict[str, str]:
    """The body of a client-credentials request (RFC 6749 §4.4.2)."""
    form = {"grant_type": "client_credentials"}
    if audience:
        form["audience"] = audience
    if scope:
        form["scope"] = scope
    return form


# ---- token exchange (RFC 8693) ------------------------------------------------------------------------

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def exchange_form(subject_token: str, audience: str | None, scope: str | None) -> dict[str, str]:
    """The body of a token-exchange request for an access token (RFC 8693 §2.1)."""
    if not isinstance(subject_token, str) or not subject_token:
        raise ValueError("subject_token must be a non-empty string")
    form = {
        "grant_type": EXCHANGE_GRANT,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
    }
    if audience:
        form["audience"] = audience
    if scope:
        form["scope"] = scope
    return form


def exchange_key(subject_token: str, audience: str | None, scope: str | None) -> CacheKey:
    """The cache key of an exchanged token: the subject token's jti, bound to a digest of the whole token, so a
    crafted token repeating another's jti never finds that caller's exchanged token (the jti is read unverified)."""
    try:
        jti = _json_object(subject_token.split(".")[1], "payload").get("jti")
    except (MalformedToken, IndexError):
        jti = None
    digest = hashlib.sha256(subject_token.encode("utf-8", "surrogatepass")).hexdigest()
    return (EXCHANGE_GRANT, jti if isinstance(jti, str) else None, digest, audience, scope)


def actors(claims: dict[str, Any]) -> list[str]:
    """The actor chain of a token (RFC 8693 §4.1, `act` within `act`): the current actor first; [] for a
    token without `act`, that is a direct call."""
    chain: list[str] = []
    act = claims.get("act")
    while isinstance(act, dict) and isinstance(act.get("sub"), str) and len(chain) < MAX_JSON_DEPTH:
        chain.append(act["sub"])
        act = act.get("act")
    return chain


def check_actors(claims: dict[str, Any], actor: str | None, no_actor: bool | str | Iterable[str]) -> None:
    """Raise ActorNotAllowed unless the current actor is `actor` (when given) and, with `no_actor`, the token
    is a direct call (True) or names none of the given actors anywhere in its chain."""
    chain = actors(claims)
    if actor is not None and (not chain or chain[0] != actor):
        raise ActorNotAllowed(f"the token's current actor is not {actor}")
    if no_actor is True and chain:
        raise ActorNotAllowed("the token was obtained by an actor; only direct calls are accepted")
    if no_actor and no_actor is not True:
        refused = {no_actor} if isinstance(no_actor, str) else set(no_actor)
        if refused & set(chain):
            raise ActorNotAllowed("the token's delegation chain names a refused actor")


def token_error(response: Any) -> TokenRequestError:
    """The exception for a refused token request (requests or httpx response), carrying the server's
    error (RFC 6749 §5.2)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    status = response.status_code
    return TokenRequestError(str(body.get("error") or f"http_{status}"), body.get("error_description"), status)


def discovered_metadata(issuer: str, url: str, response: Any) -> dict[str, Any] | None:
    """The metadata in a discovery response (requests or httpx), None if it is not a 200; RFC 8414 §3.3:
    its issuer must be exactly the one asked for."""
    if response.status_code != 200:
        return None
    try:
        metadata = response.json()
    except ValueError:
        raise DiscoveryError(f"{url} did not return JSON") from None
    if not isinstance(metadata, dict) or metadata.get("issuer") != issuer:
        raise DiscoveryError(f"metadata at {url} does not name issuer {issuer!r} (RFC 8414 §3.3)")
    return metadata


DISCOVERY_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")


# (audience, scope) for a client's own tokens; (EXCHANGE_GRANT, subject jti, subject digest, audience, scope)
# for exchanged ones.
CacheKey = tuple[str | None, ...]


class TokenCache:
    """One token per key and the decisions about it; the shells do the locking and I/O. Exchanged tokens
    have a key per incoming token, so the cache is bounded: past `size` entries, expired ones go first, then
    the oldest."""

    def __init__(self, size: int = 10000) -> None:
        self.size = size
        self.entries: dict[CacheKey, CachedToken] = {}

    def fresh(self, key: CacheKey, now: float) -> str | None:
        """The token if it is not stale yet."""
        entry = self.entries.get(key)
        return entry.access_token if entry is not None and now < entry.stale_at else None

    def usable(self, key: CacheKey, now: float) -> str | None:
        """The token if it has not expired, stale or not."""
        entry = self.entries.get(key)
        return entry.access_token if entry is not None and now < entry.expires_at else None

    def store(self, key: CacheKey, response: dict[str, Any], requested_at: float) -> str:
        entry = CachedToken.from_response(response, requested_at)
        self.entries.pop(key, None)
        if len(self.entries) >= self.size:
            self.entries = {k: e for k, e in self.entries.items() if e.usable(requested_at)}
            while len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
        self.entries[key] = entry
        return entry.access_token

    def invalidate(self, token: str) -> None:
        for key, entry in list(self.entries.items()):
            if entry.access_token == token:
                self.entries.pop(key, None)


class Credentials:
    """How a client proves itself: a secret (HTTP Basic, RFC 6749 §2.3.1) or a private key (RFC 7523)."""

    def __init__(self, client_id: str, client_secret: str | None, private_key: Any, key_id: str | None, clock: Callable[[], float]):
        if (client_secret is None) == (private_key is None):
            raise ValueError("give exactly one of client_secret and private_key")
        self.client_id = client_id
        self._secret = client_secret
        self._key = load_private_key(private_key) if private_key is not None else None
        self._alg = signing_algorithm(self._key) if self._key is not None else None
        self.key_id = key_id
        self.clock = clock

    def auth(self, audience: str) -> tuple[dict[str, str], tuple[str, str] | None]:
        """Form fields and the HTTP Basic pair for one request to `audience` (an endpoint URL)."""
        if self._key is not None:
            assertion = client_assertion(self.client_id, audience, self._key, self._alg, self.key_id, self.clock())
            return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}, None
        return {}, (quote_plus(self.client_id), quote_plus(self._secret))


# ---- where a token may be sent ------------------------------------------------------------------------


def origin_of(url: str) -> tuple[str, str, int]:
    """The (scheme, host, port) origin of an http(s) URL (RFC 6454 §4), default port filled in; ValueError without one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    return scheme, parts.hostname, DEFAULT_PORTS[scheme] if parts.port is None else parts.port


class OriginPin:
    """The one origin a token may be sent to (SPEC §7): the one given, or else that of the first URL asked about."""

    def __init__(self, origin: str | None = None):
        self.origin = origin_of(origin) if origin is not None else None
        self._lock = threading.Lock()

    def admits(self, url: str) -> bool:
        """Whether a token may go to `url`; with no origin yet, `url` pins it."""
        try:
            candidate = origin_of(url)
        except ValueError:
            return False
        if self.origin is None:
            with self._lock:
                if self.origin is None:
                    self.origin = candidate
        return candidate == self.origin


# ---- private_key_jwt ----------------------------------------------------------------------------------


def load_private_key(private_key: Any) -> Any:
    """A private key object from a PEM path, PEM bytes/str, or a key object."""
    if isinstance(private_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        return private_key
    if isinstance(private_key, str) and "-----BEGIN" not in private_key:
        with open(private_key, "rb") as fh:
            private_key = fh.read()
    if isinstance(private_key, str):
        private_key = private_key.encode()
    return serialization.load_pem_private_key(private_key, password=None)


def signing_algorithm(key: Any) -> str:
    """The JWS algorithm a private key signs assertions with."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise ValueError("private_key must be an EC P-256, RSA or Ed25519 key")


def client_assertion(client_id: str, audience: str, key: Any, alg: str, key_id: str | None, now: float, lifetime: int = 60) -> str:
    """An RFC 7523 client assertion: iss = sub = client_id, aud = the token endpoint, a fresh jti."""
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + lifetime,
        "jti": secrets.token_urlsafe(18),
    }
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


# ---- JWKS cache -----------------------------------------------------------------------------------


def cache_lifetime(cache_control: str | None, default: float, low: float, high: float) -> float:
    """Seconds to keep a JWKS: its Cache-Control max-age clamped to [low, high], or `default`."""
    match = _MAX_AGE_RE.search(cache_control or "")
    if not match:
        return default
    return min(high, max(low, float(match.group(2))))


def key_algorithms(jwk: dict[str, Any]) -> tuple[str, ...]:
    """Algorithms a JWK may verify: its `alg` if it is one its key type allows, else all its type allows."""
    allowed = _ALGS_BY_KEY.get((jwk.get("kty"), None if jwk.get("kty") == "RSA" else jwk.get("crv")), ())
    if "alg" in jwk:
        return (jwk["alg"],) if jwk["alg"] in allowed else ()
    return allowed


def parse_jwks(data: Any) -> dict[str, tuple[tuple[str, ...], Any]]:
    """kid -> (algorithms, public key) for every usable signing key of a JWK Set; others are skipped."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or jwk.get("use", "sig") != "sig":
            continue
        algs = key_algorithms(jwk)
        if not algs:
            continue
        try:
            keys[jwk["kid"]] = (algs, jwt.PyJWK(jwk, algs[0]).key)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
    return keys


@dataclass
class JwksState:
    """What a verifier knows of the issuer's keys and when it may ask again.

    Keys are replaced only by a successful fetch; a failed one keeps them (stale-if-error, bounded).
    An unknown kid may trigger a refetch at most once per `cooldown`; kids still unknown after one are
    remembered for the cooldown, so a flood of random kids costs at most one fetch per cooldown.
    """

    cooldown: float = 30.0
    default_lifetime: float = 600.0
    min_lifetime: float = 60.0
    max_lifetime: float = 3600.0
    stale_if_error: float = 86400.0
    keys: dict[str, tuple[tuple[str, ...], Any]] = field(default_factory=dict)
    fetched_at: float | None = None
    expires_at: float = 0.0
    last_forced: float = float("-inf")
    last_failure: float = float("-inf")
    unknown: dict[str, float] = field(default_factory=dict)

    def needs_refresh(self, now: float) -> bool:
        """True once the cached set is past 80% of its lifetime (refresh ahead) or there is none."""
        if self.fetched_at is None:
            return now - self.last_failure >= min(self.cooldown, 5.0)
        ahead = self.fetched_at + 0.8 * (self.expires_at - self.fetched_at)
        return now >= ahead and now - self.last_failure >= min(self.cooldown, 5.0)

    def usable(self, now: float) -> bool:
        """Whether the cached keys may still be used (fresh, or stale within the stale-if-error bound)."""
        return self.fetched_at is not None and now < self.expires_at + self.stale_if_error

    def may_fetch_for(self, kid: str, now: float) -> bool:
        """Whether an unknown kid may cause a refetch now."""
        if self.unknown.get(kid, float("-inf")) > now:
            return False
        return now - self.last_forced >= self.cooldown

    def accepted(self, jwks: Any, cache_control: str | None, now: float) -> None:
        keys = parse_jwks(jwks)
        self.keys = keys
        self.fetched_at = now
        self.expires_at = now + cache_lifetime(cache_control, self.default_lifetime, self.min_lifetime, self.max_lifetime)
        self.unknown = {k: t for k, t in self.unknown.items() if t > now and k not in keys}

    def failed(self, now: float) -> None:
        self.last_failure = now

    def forced(self, now: float) -> None:
        self.last_forced = now

    def still_unknown(self, kid: str, now: float) -> None:
        if len(self.unknown) > 10000:
            self.unknown.clear()
        self.unknown[kid] = now + self.cooldown

    def lookup(self, kid: Any, now: float) -> tuple[tuple[str, ...], Any] | None:
        if not isinstance(kid, str) or not self.usable(now):
            return None
        return self.keys.get(kid)


# ---- access-token checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactJws:
    """A compact JWS split and decoded once (RFC 7515 §7.1); nothing in it is trusted yet."""

    header: dict[str, Any]
    signing_input: bytes
    payload_b64: str
    signature: bytes


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _refuse_constant(name: str) -> None:
    """parse_constant hook: NaN and Infinity are not JSON numbers (RFC 8259 §6)."""
    raise ValueError(f"{name} is not JSON")


def _nests_within(value: Any, limit: int) -> bool:
    """Whether arrays and objects in a decoded JSON value nest at most `limit` deep (walked level by level, no recursion)."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(limit):
        level = [
            child for node in level for child in (node.values() if isinstance(node, dict) else node) if isinstance(child, (dict, list))
        ]
        if not level:
            return True
    return not level


def _json_object(segment: str, part: str) -> dict[str, Any]:
    """A JWS header or payload segment as a JSON object: base64url of UTF-8 JSON (RFC 7515 §7.1, RFC 8259),
    nested at most MAX_JSON_DEPTH deep; anything else, however deep or odd, is MalformedToken."""
    try:
        value = json.loads(_b64decode(segment).decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise MalformedToken(f"token {part} is not valid JSON") from None
    if not isinstance(value, dict) or not _nests_within(value, MAX_JSON_DEPTH):
        raise MalformedToken(f"token {part} is not a JSON object")
    return value


def parse_token(token: Any) -> CompactJws:
    """Split and decode a token, refusing anything but a compact JWS whose typ is at+jwt and alg asymmetric."""
    if not isinstance(token, str) or len(token) > 16384:
        raise MalformedToken("token is not a compact JWS")
    parts = token.split(".")
    if len(parts) != 3 or not _SEGMENT_RE.match(parts[0]) or not _SEGMENT_RE.match(parts[1]) or not _SIGNATURE_RE.match(parts[2]):
        raise MalformedToken("token is not a compact JWS")
    header = _json_object(parts[0], "header")
    try:
        signature = _b64decode(parts[2])
    except ValueError:
        raise MalformedToken("token signature is not base64url") from None
    if header.get("typ") not in TOKEN_TYPES:
        raise WrongTokenType("token typ must be at+jwt")
    if header.get("alg") not in ASYMMETRIC_ALGORITHMS:
        raise DisallowedAlgorithm("token algorithm is not accepted")
    if "crit" in header or "b64" in header:
        raise MalformedToken("token uses JWS extensions this verifier does not support")
    return CompactJws(header, f"{parts[0]}.{parts[1]}".encode("ascii"), parts[1], signature)


def verify_signature(jws: CompactJws, key: tuple[tuple[str, ...], Any]) -> dict[str, Any]:
    """The payload if the signature verifies with the key, pinned to the algorithms the key allows."""
    algs, public_key = key
    alg = jws.header["alg"]
    if alg not in algs:
        raise DisallowedAlgorithm("token algorithm does not match its key")
    if not _JWA[alg].verify(jws.signing_input, public_key, jws.signature):
        raise InvalidSignature("signature verification failed")
    return _json_object(jws.payload_b64, "payload")


def check_claims(claims: dict[str, Any], issuer: str, audience: str, now: float, leeway: float) -> None:
    """RFC 9068 §4: iss exact, aud contains ours, exp/nbf/iat with leeway, sub/client_id/jti present."""
    for name in ("exp", "iat"):
        if name not in claims:
            raise MissingClaim(f"token lacks the {name} claim")
    for name in ("exp", "iat", "nbf"):
        if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], (int, float))):
            raise MissingClaim(f"token {name} is not a number")
    if claims.get("iss") != issuer:
        raise WrongIssuer("token issuer is not trusted")
    aud = claims.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise WrongAudience("token audience does not match")
    if claims["exp"] <= now - leeway:
        raise ExpiredToken("token has expired")
    if claims.get("nbf", 0) > now + leeway or claims["iat"] > now + leeway:
        raise ImmatureToken("token is not valid yet")
    for name in ("sub", "client_id", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise MissingClaim(f"token lacks the {name} claim")


def check_scopes(claims: dict[str, Any], required: Iterable[str] | None) -> None:
    """Raise InsufficientScope unless every required scope is in the token's `scope`."""
    if not required:
        return
    granted = claims.get("scope", "")
    granted_set = set(granted.split()) if isinstance(granted, str) else set()
    missing = [s for s in required if s not in granted_set]
    if missing:
        raise InsufficientScope(f"token lacks scope {' '.join(missing)}")


class VerifiedCache:
    """token -> claims for tokens already verified, until their exp; bounded in size (oldest dropped)."""

    def __init__(self, size: int = 10000):
        self.size = size
        self._entries: dict[str, dict[str, Any]] = {}

    def get(self, token: str, now: float, leeway: float) -> dict[str, Any] | None:
        claims = self._entries.get(token)
        if claims is None:
            return None
        if claims["exp"] <= now - leeway:
            self._entries.pop(token, None)
            raise ExpiredToken("token has expired")
        return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        if self.size <= 0:
            return
        while len(self._entries) >= self.size:
            try:
                self._entries.pop(next(iter(self._entries)))
            except (StopIteration, KeyError, RuntimeError):
                break
        self._entries[token] = claims

    def clear(self) -> None:
        self._entries.clear()


class Verification:
    """Everything a verifier decides, shared by the sync and async shells, which only fetch and lock."""

    def __init__(self, issuer: str, audience: str, leeway: float, cooldown: float, stale_if_error: float, cache_size: int):
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.jwks = JwksState(cooldown=cooldown, stale_if_error=stale_if_error)
        self.verified = VerifiedCache(cache_size)
        self._active: dict[str, float] = {}

    def cached(self, token: Any, now: float) -> dict[str, Any] | None:
        """Claims of a token verified before and not expired since."""
        return self.verified.get(token, now, self.leeway) if isinstance(token, str) else None

    def must_wait_for_keys(self, now: float) -> bool:
        """True when there are no usable keys, so a refresh must finish before verifying."""
        return not self.jwks.usable(now)

    def needs_fetch_for(self, kid: Any, now: float) -> bool:
        """An unknown kid that may trigger a refetch now (at most once per cooldown)."""
        return isinstance(kid, str) and self.jwks.lookup(kid, now) is None and self.jwks.may_fetch_for(kid, now)

    def fetched_for(self, kid: str, now: float) -> None:
        """After a refetch for `kid`: remember it if it is still unknown."""
        if self.jwks.lookup(kid, now) is None:
            self.jwks.still_unknown(kid, now)

    def accept_keys(self, data: Any, cache_control: str | None, now: float) -> None:
        before = set(self.jwks.keys)
        self.jwks.accepted(data, cache_control, now)
        if before - set(self.jwks.keys):
            # A key was withdrawn (emergency rotation): tokens it signed must be checked again.
            self.verified.clear()

    def complete(self, token: str, jws: CompactJws, now: float) -> dict[str, Any]:
        """Check signature and claims of a parsed token with the cached keys, and remember it."""
        key = self.jwks.lookup(jws.header.get("kid"), now)
        if key is None:
            if not self.jwks.usable(now):
                raise KeySetUnavailable("the issuer's keys could not be fetched")
            raise UnknownKey("token was signed by a key the issuer does not publish")
        claims = verify_signature(jws, key)
        check_claims(claims, self.issuer, self.audience, now, self.leeway)
        self.verified.put(token, claims)
        return claims

    def known_active(self, jti: str, now: float) -> bool:
        return self._active.get(jti, 0) > now

    def remember_active(self, jti: str, until: float) -> None:
        if len(self._active) > 10000:
            self._active.clear()
        self._active[jti] = until

    @staticmethod
    def result(
        claims: dict[str, Any], scopes: Iterable[str] | None, actor: str | None = None, no_actor: bool | str | Iterable[str] = False
    ) -> dict[str, Any]:
        check_scopes(claims, scopes)
        check_actors(claims, actor, no_actor)
        return dict(claims)
