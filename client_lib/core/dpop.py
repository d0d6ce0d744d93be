"""DPoP (RFC 9449) without I/O: making proofs, judging a proof against a request, stateless server nonces and
the memory replay cache. The server's token endpoint and client_lib's verifier judge proofs with the same
`ProofCheck`; the JOSE parts (typ, alg, jwk, signature, thumbprint) are `client_lib.jose`'s."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from ..exceptions import InvalidDPoPProof, UseDPoPNonce
from ..jose import DPoPProof, b64url, b64url_decode, default_algorithm, public_jwk, sha256_b64url, sign_dpop_proof
from .credentials import load_private_key

# RFC 9449 §4.3 item 11 / §11.1: how old a proof may be, and how far ahead of our clock its iat may lie.
MAX_AGE = 60.0
MAX_SKEW = 5.0
MAX_JTI = 256
MAX_PROOF_LENGTH = 8192
_DEFAULT_PORTS = {"http": 80, "https": 443}


def htu(url: str) -> str:
    """RFC 9449 §4.2, §4.3 item 9: the URL a proof names, without query and fragment, normalised as RFC 3986
    §6.2.2-6.2.3 allow (scheme and host lower case, default port dropped, empty path as `/`); ValueError if
    it is not an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    authority = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{authority}{parts.path or '/'}"


def single_proof(values: list[str]) -> str | None:
    """RFC 9449 §4.3 item 1: the one DPoP header of a request, None without one; InvalidDPoPProof for several
    (a server may have joined them with commas, which a compact JWS never holds) or one too long to be a proof."""
    if not values:
        return None
    if len(values) > 1 or "," in values[0]:
        raise InvalidDPoPProof("a request must carry exactly one DPoP header")
    proof = values[0].strip()
    if not proof or len(proof) > MAX_PROOF_LENGTH:
        raise InvalidDPoPProof("the DPoP header is empty or too long")
    return proof


class Nonces:
    """RFC 9449 §8, §9: server nonces with no state: a time window's number and its HMAC under a secret, so any
    instance sharing the secret accepts any other's nonce. A nonce is good in its window and the next."""

    def __init__(self, secret: Callable[[], bytes], window: float = 300.0):
        self._secret = secret
        self.window = window

    def _mac(self, number: int) -> bytes:
        return hmac.new(self._secret(), b"dpop-nonce:" + number.to_bytes(8, "big"), hashlib.sha256).digest()[:16]

    def current(self, now: float) -> str:
        number = int(now // self.window)
        return b64url(number.to_bytes(8, "big") + self._mac(number))

    def valid(self, nonce: Any, now: float) -> bool:
        if not isinstance(nonce, str) or len(nonce) != 32:
            return False
        try:
            raw = b64url_decode(nonce)
        except ValueError:
            return False
        number = int.from_bytes(raw[:8], "big")
        return number in (int(now // self.window), int(now // self.window) - 1) and hmac.compare_digest(raw[8:], self._mac(number))


@dataclass(frozen=True)
class ProofCheck:
    """RFC 9449 §4.3 items 3 and 8-12: a proof's claims against the request it came with. `max_age` and `skew`
    bound its iat (item 11); `nonces`, when set, require a current server nonce (item 10)."""

    max_age: float = MAX_AGE
    skew: float = MAX_SKEW
    nonces: Nonces | None = None

    def check(self, proof: DPoPProof, method: str, url: str, now: float, access_token: str | None = None) -> None:
        """Raise InvalidDPoPProof (UseDPoPNonce for a missing or stale nonce) naming the first check that fails."""
        claims = proof.claims
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI:
            raise InvalidDPoPProof(f"DPoP proof jti must be a string of 1 to {MAX_JTI} characters")
        if claims.get("htm") != method:
            raise InvalidDPoPProof(f"DPoP proof htm is not {method}")
        try:
            matches = isinstance(claims.get("htu"), str) and htu(claims["htu"]) == htu(url)
        except ValueError:
            matches = False
        if not matches:
            raise InvalidDPoPProof("DPoP proof htu does not name this URL")
        iat = claims.get("iat")
        if not isinstance(iat, (int, float)) or isinstance(iat, bool):
            raise InvalidDPoPProof("DPoP proof lacks a numeric iat")
        if iat < now - self.max_age or iat > now + self.skew:
            raise InvalidDPoPProof("DPoP proof iat is outside the accepted window")
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str) or not hmac.compare_digest(ath, sha256_b64url(access_token)):
                raise InvalidDPoPProof("DPoP proof ath does not match the access token")
        if self.nonces is not None and not self.nonces.valid(claims.get("nonce"), now):
            raise UseDPoPNonce("the server requires a DPoP nonce", self.nonces.current(now))

    def replay_until(self, proof: DPoPProof) -> float:
        """How long the proof's jti must be remembered: while its iat is inside the window."""
        return float(proof.claims["iat"]) + self.max_age


def replay_key(proof: DPoPProof) -> tuple[str, str]:
    """Where a proof's jti is recorded: per key (`dpop:` + jkt, which no client id can equal) and jti."""
    return f"dpop:{proof.jkt}", proof.claims["jti"]


class MemoryProofReplay:
    """Proof jtis seen by this process, each until its proof could no longer be accepted; bounded: when full,
    expired entries go first, then a new proof is refused rather than an old entry forgotten. The same
    `first_use(name, jti, expires_at)` as the server's replay caches."""

    def __init__(self, clock: Callable[[], float], size: int = 100_000):
        self.clock = clock
        self.size = size
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first_use(self, name: str, jti: str, expires_at: float) -> bool:
        """Record the jti; False if it was seen before (or the cache is full of live entries)."""
        key, now = (name, jti), self.clock()
        with self._lock:
            if key in self._seen and self._seen[key] >= now:
                return False
            if len(self._seen) >= self.size:
                self._seen = {k: t for k, t in self._seen.items() if t >= now}
                if len(self._seen) >= self.size:
                    return False
            self._seen[key] = expires_at
            return True


class DPoPKey:
    """A client's DPoP key (RFC 9449 §4): makes a fresh proof for each request and remembers the nonce each
    origin last asked for (§8, §9). `key` is a private key object, a PEM (path, bytes or text), or True for a
    new ES256 key held only in memory."""

    def __init__(self, key: Any, clock: Callable[[], float]):
        self.key = ec.generate_private_key(ec.SECP256R1()) if key is True else load_private_key(key)
        self.alg = default_algorithm(self.key)
        self.clock = clock
        self._nonces: dict[str, str] = {}

    @property
    def jkt(self) -> str:
        """RFC 7638 thumbprint of the public key: the `cnf.jkt` of tokens bound to it."""
        return public_jwk(self.key.public_key(), self.alg)["kid"]

    def proof(self, method: str, url: str, access_token: str | None = None) -> str:
        """A new proof for one request (never reused): htm, htu without query and fragment, a fresh jti, iat
        now, the origin's last nonce, and `ath` when it goes with an access token."""
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(18), "htm": method.upper(), "htu": htu(url), "iat": int(self.clock())}
        nonce = self._nonces.get(_origin(url))
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = sha256_b64url(access_token)
        return sign_dpop_proof(self.key, self.alg, claims)

    def remember_nonce(self, url: str, nonce: str | None) -> bool:
        """Keep the nonce an origin sent in DPoP-Nonce; True if it is a new one (worth one retry)."""
        if not nonce or len(nonce) > 512:
            return False
        origin = _origin(url)
        if self._nonces.get(origin) == nonce:
            return False
        if len(self._nonces) >= 1000:
            self._nonces.clear()
        self._nonces[origin] = nonce
        return True


def presentation(token: str, dpop: DPoPKey | None, method: str, url: str) -> dict[str, str]:
    """The headers presenting `token` on a request: `Bearer` (RFC 6750 §2.1), or `DPoP` with a fresh proof for
    this method and URL carrying the token's hash (RFC 9449 §7.1)."""
    if dpop is None:
        return {"Authorization": f"Bearer {token}"}
    return {"Authorization": f"DPoP {token}", "DPoP": dpop.proof(method, url, token)}


def asks_for_nonce(status: int, www_authenticate: str | None) -> bool:
    """A resource server's 401 asking for a DPoP nonce (RFC 9449 §9)."""
    return status == 401 and "use_dpop_nonce" in (www_authenticate or "")


def _origin(url: str) -> str:
    parts = urlsplit(htu(url))
    return f"{parts.scheme}://{parts.netloc}"
