"""JOSE as TokenDealer and its clients use it, in one place: which algorithms each key type may use, public
JWKs and their thumbprints, JWK Sets, compact JWS parsing and signature checks, and the JWT claim checks
(RFC 7515, 7517, 7518, 7519, 7638, 9068). No I/O and no clock of its own; the server imports it too.

Every refusal is an `InvalidToken` subclass whose message starts with the `noun` the caller names
("token", "client_assertion"), so each caller can pass the message on as it is.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from .exceptions import (
    DisallowedAlgorithm,
    ExpiredToken,
    ImmatureToken,
    InvalidDPoPProof,
    InvalidSignature,
    InvalidToken,
    MalformedToken,
    MissingClaim,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)

# The algorithms each key type may use, keyed by (kty, crv) with crv None for RSA (RFC 7518 §3, RFC 8037 §3.1).
# Asymmetric only, so `none` and HMAC never verify anything.
ALGS_BY_KEY: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("EC", "P-256"): ("ES256",),
    ("RSA", None): ("RS256", "RS512", "PS256"),
    ("OKP", "Ed25519"): ("EdDSA",),
}
ALGORITHMS = tuple(alg for algs in ALGS_BY_KEY.values() for alg in algs)
# RFC 9449 §4.2: a DPoP proof's `typ`, and the algorithms a proof may use (asymmetric only, §4.3 item 5): the
# same table as every other signature here, advertised as dpop_signing_alg_values_supported.
DPOP_TYPE = "dpop+jwt"
DPOP_ALGORITHMS = ALGORITHMS
# RFC 9068 §4: the `typ` of an access token, compared exactly.
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
# RFC 7523 §2.2: the client_assertion_type of a JWT client assertion.
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_TOKEN_LENGTH = 16384
MIN_RSA_BITS = 2048  # RFC 7518 §3.3, §3.5: smaller RSA keys MUST NOT be used
MAX_JSON_DEPTH = 32  # deeper JSON is refused, so nothing recurses on what an attacker nests
# RFC 7517 §9.3 / RFC 7518 §6: members that carry private or symmetric key material.
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k", "oth")
# RFC 7638 §3.2: the members of each key type that enter the thumbprint.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
_JWA = get_default_algorithms()
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PRIVATE_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)


# ---- encodings --------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return b64url_bytes(data).decode("ascii")


def b64url_bytes(data: bytes) -> bytes:
    """Base64url without padding (RFC 7515 §2) as ASCII bytes (base64.urlsafe_b64encode's work, without its two wrappers)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=")


def b64url_decode(segment: str) -> bytes:
    """The bytes of an unpadded base64url segment; ValueError if it is not one."""
    # Strict: any character outside the base64url alphabet is refused (base64.urlsafe_b64decode would skip it),
    # and so are standard base64's `+` and `/` and padding, which the mapping to standard base64 would let by.
    if "+" in segment or "/" in segment or "=" in segment:
        raise ValueError("not unpadded base64url")
    return binascii.a2b_base64(segment.replace("-", "+").replace("_", "/") + "=" * (-len(segment) % 4), strict_mode=True)


def _refuse_constant(name: str) -> None:
    """parse_constant hook: NaN and Infinity are not JSON numbers (RFC 8259 §6)."""
    raise ValueError(f"{name} is not JSON")


# One decoder for every JWS segment (json.loads with a hook builds a new one per call), and its scanner: a segment
# that is one JSON value with no whitespace around it (what signers write) is scanned without `decode`'s two
# whitespace matches; anything else goes through `decode`, which decides.
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)
_SCAN_JSON: Callable[[str, int], tuple[Any, int]] = _STRICT_JSON.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__


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


def json_object(segment: str, what: str) -> dict[str, Any]:
    """A JWS header or payload segment as a JSON object: base64url of UTF-8 JSON (RFC 7515 §7.1, RFC 8259),
    nested at most MAX_JSON_DEPTH deep; anything else, however deep or odd, is MalformedToken naming `what`."""
    try:
        data = b64url_decode(segment)
    except ValueError:
        raise MalformedToken(f"{what} is not valid JSON") from None
    return json_object_of(data, what)


def json_object_of(data: bytes, what: str) -> dict[str, Any]:
    """`json_object` of a segment already decoded from base64url."""
    try:
        text = data.decode("utf-8")
        try:
            value, end = _SCAN_JSON(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            value = _STRICT_JSON.decode(text)
    except (ValueError, RecursionError):
        raise MalformedToken(f"{what} is not valid JSON") from None
    # Fewer brackets than the limit cannot nest deeper than it: most tokens skip the walk.
    shallow = data.count(b"{") + data.count(b"[") <= MAX_JSON_DEPTH
    if not isinstance(value, dict) or not (shallow or _nests_within(value, MAX_JSON_DEPTH)):
        raise MalformedToken(f"{what} is not a JSON object")
    return value


# ---- keys -------------------------------------------------------------------------------------------


def key_algorithms(jwk: dict[str, Any]) -> tuple[str, ...]:
    """The algorithms a JWK may verify: its `alg` if its key type allows it, else all its type allows."""
    kty, crv = jwk.get("kty"), None if jwk.get("kty") == "RSA" else jwk.get("crv")
    if not isinstance(kty, str) or not (crv is None or isinstance(crv, str)):
        return ()
    allowed = ALGS_BY_KEY.get((kty, crv), ())
    if "alg" in jwk:
        return (jwk["alg"],) if jwk["alg"] in allowed else ()
    return allowed


def default_algorithm(key: Any) -> str:
    """The algorithm a key (private or public) signs with unless told otherwise."""
    if isinstance(key, _PRIVATE_KEYS):
        key = key.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("only EC P-256, RSA and Ed25519 keys are supported")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as the key id."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


def sha256_b64url(text: str) -> str:
    """Base64url SHA-256 of a string's UTF-8 bytes: RFC 9449 §4.2 `ath` of an access token."""
    return b64url(hashlib.sha256(text.encode("utf-8")).digest())


def public_jwk(public_key: Any, alg: str) -> dict[str, Any]:
    """The public JWK (RFC 7517) of a key, with kid (RFC 7638 thumbprint), alg and use."""
    jwk = _JWA[alg].to_jwk(public_key, as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": alg, "use": "sig"}


class JwkError(ValueError):
    """A JWK or JWK Set that cannot be used here; the message says why."""


@dataclass(frozen=True)
class VerificationKey:
    """A public key and the algorithms it may verify."""

    algorithms: tuple[str, ...]
    key: Any

    @classmethod
    def from_jwk(cls, jwk: Any) -> VerificationKey:
        """The key of a public signing JWK of a supported type, else JwkError saying why."""
        if not isinstance(jwk, dict):
            raise JwkError("each JWK must be a JSON object")
        if any(member in jwk for member in PRIVATE_MEMBERS):
            raise JwkError("the JWK Set holds private or symmetric key material; it may hold public keys only")
        if jwk.get("use", "sig") != "sig":
            raise JwkError("a JWK in the set is not for signatures (use is not sig)")
        if "kid" in jwk and not isinstance(jwk["kid"], str):
            raise JwkError("a JWK in the set has a kid that is not a string")
        algorithms = key_algorithms(jwk)
        if not algorithms:
            raise JwkError(f"unsupported key (kty {jwk.get('kty')!r:.40}, alg {jwk.get('alg')!r:.40}); use {', '.join(ALGORITHMS)}")
        try:
            key = jwt.PyJWK(jwk, algorithms[0]).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError, AttributeError):
            raise JwkError("a JWK in the set is malformed") from None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise JwkError(f"an RSA key in the set has {key.key_size} bits; at least {MIN_RSA_BITS} are required (RFC 7518 §3.3)")
        return cls(algorithms, key)


def checked_jwk_set(data: Any) -> dict[str, Any]:
    """A registered JWK Set (RFC 7517 §5) if it has keys and every one is usable here, else JwkError."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise JwkError('a JWK Set must be a JSON object {"keys": [...]} with at least one key')
    for jwk in data["keys"]:
        VerificationKey.from_jwk(jwk)
    return {"keys": list(data["keys"])}


def verification_keys(data: Any) -> dict[str, VerificationKey]:
    """kid -> key for each usable key of an issuer's JWK Set; keys without a kid or unusable here are
    skipped (RFC 7517 §5), JwkError if it is not a JWK Set at all."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwkError("not a JWK Set")
    keys = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        try:
            keys[jwk["kid"]] = VerificationKey.from_jwk(jwk)
        except JwkError:
            continue
    return keys


# ---- compact JWS ------------------------------------------------------------------------------------


@dataclass(slots=True)
class CompactJws:
    """A compact JWS split and decoded once (RFC 7515 §7.1); nothing in it is trusted yet. Read it, never change
    it: its `header` may be shared with other tokens of the same header text. (Slotted rather than frozen: a frozen
    dataclass's `__init__` cost more than the rest of splitting a token.)"""

    header: dict[str, Any]
    signing_input: bytes
    payload: bytes  # decoded from base64url, not yet from JSON
    signature: bytes
    noun: str = "token"
    _claims: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def alg(self) -> str:
        """The header's algorithm, one of ALGORITHMS (parse_jws refuses any other)."""
        return self.header["alg"]

    @property
    def kid(self) -> Any:
        return self.header.get("kid")

    def unverified_claims(self) -> dict[str, Any]:
        """The payload as a JSON object, decoded once per JWS (also what `verify_signature` returns); before
        a signature check it serves only to choose the key."""
        claims = self._claims
        if claims is None:
            claims = self._claims = json_object_of(self.payload, f"{self.noun} payload")
        return claims


# Every token of one signer (a key, a DPoP client) has the same header: its decoded value is kept by the
# header's exact text once it passed the checks that do not depend on the caller; a bounded number of them, each
# short (a signer's header is well under 1 KB, a DPoP proof's with an RSA key included), so a flood of made-up
# headers holds a few MB at most.
_HEADERS: dict[str, dict[str, Any]] = {}
_HEADERS_MAX = 4096
_HEADER_KEPT_LENGTH = 1024
# Short text can still decode to many objects (768 bytes of `[],` are 256 lists): only a header of a few string
# members, and a `jwk` of a few strings, is kept.
_HEADER_KEPT_MEMBERS = 8


def _plain(header: dict[str, Any]) -> bool:
    """Whether `header` is small once decoded: a few members, each a string or an object of a few strings."""
    if len(header) > _HEADER_KEPT_MEMBERS:
        return False
    for value in header.values():
        if isinstance(value, dict):
            if len(value) > _HEADER_KEPT_MEMBERS or not all(isinstance(member, str) for member in value.values()):
                return False
        elif not isinstance(value, str):
            return False
    return True


def parse_jws(token: Any, types: tuple[str, ...] | None = None, noun: str = "token") -> CompactJws:
    """Split and decode a compact JWS, refusing anything else: more than MAX_TOKEN_LENGTH, a header that is
    not strict JSON, an algorithm not in ALGORITHMS, JWS extensions (`crit`, `b64`, RFC 7515 §4.1.11,
    RFC 7797) and, when `types` is given, a `typ` not exactly one of them."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise MalformedToken(f"{noun} is not a compact JWS")
    segments = token.split(".")
    if len(segments) != 3 or not token.isascii():
        raise MalformedToken(f"{noun} is not a compact JWS")
    header_b64, payload_b64, signature_b64 = segments
    if not header_b64 or not payload_b64:
        raise MalformedToken(f"{noun} is not a compact JWS")
    # A known header text decoded before; the other segments are decoded strictly here (b64url_decode refuses any
    # character outside the base64url alphabet), so a token either is a compact JWS or is refused as one.
    header = _HEADERS.get(header_b64)
    known = header is not None
    try:
        header_json = b"" if known else b64url_decode(header_b64)
        payload = b64url_decode(payload_b64)
        signature = b64url_decode(signature_b64)
    except ValueError:
        raise MalformedToken(f"{noun} is not a compact JWS") from None
    if header is None:
        header = json_object_of(header_json, f"{noun} header")
    if types is not None and header.get("typ") not in types:
        raise WrongTokenType(f"{noun} typ is not {types[0]}")
    if not known:
        if header.get("alg") not in ALGORITHMS:
            raise DisallowedAlgorithm(f"{noun} algorithm {header.get('alg')!r:.40} is not accepted")
        if "crit" in header or "b64" in header:
            raise MalformedToken(f"{noun} uses JWS extensions that are not supported")
        if len(header_b64) <= _HEADER_KEPT_LENGTH and _plain(header):
            if len(_HEADERS) >= _HEADERS_MAX:
                _HEADERS.clear()
            _HEADERS[header_b64] = header
    return CompactJws(header, token[: len(header_b64) + len(payload_b64) + 1].encode("ascii"), payload, signature, noun)


def verify_signature(jws: CompactJws, key: VerificationKey) -> dict[str, Any]:
    """The payload if the signature verifies with `key`, pinned to the algorithms that key allows."""
    if jws.alg not in key.algorithms:
        raise DisallowedAlgorithm(f"{jws.noun} algorithm does not match its key")
    if not _JWA[jws.alg].verify(jws.signing_input, key.key, jws.signature):
        raise InvalidSignature("signature verification failed")
    return jws.unverified_claims()


# ---- DPoP proofs (RFC 9449 §4) ---------------------------------------------------------------------


@dataclass(frozen=True)
class DPoPProof:
    """A DPoP proof whose JOSE parts were checked (RFC 9449 §4.3 items 2, 4-7): its claims, not yet judged
    against the request, and `jkt`, the RFC 7638 thumbprint of the key that signed it."""

    claims: dict[str, Any]
    jkt: str


# A client signs every proof with the same key, so every proof of it has the same header: the key read from a
# header (and its thumbprint) is kept by the header's exact text, a bounded number of them.
_PROOF_KEYS: dict[str, tuple[VerificationKey, str]] = {}
_PROOF_KEYS_MAX = 4096
# Kept by headers of at most 2 KB (a proof with an RSA key of 4096 bits is ~1.1 KB): the key is kept before the
# signature is checked, so 4096 made-up proofs padded to 8 KB held ~45 MB per process (~18 MB at this bound).
_PROOF_HEADER_KEPT_LENGTH = 2048


def _proof_key(jws: CompactJws) -> tuple[VerificationKey, str]:
    """The public key of a proof's `jwk` header (RFC 9449 §4.3 item 7) and its RFC 7638 thumbprint."""
    header = jws.signing_input.split(b".", 1)[0].decode("ascii")
    known = _PROOF_KEYS.get(header)
    if known is not None:
        return known
    jwk = jws.header.get("jwk")
    if not isinstance(jwk, dict):
        raise InvalidDPoPProof("DPoP proof has no jwk header")
    if any(member in jwk for member in PRIVATE_MEMBERS):
        raise InvalidDPoPProof("DPoP proof jwk holds private key material")
    key = VerificationKey.from_jwk(jwk)
    # The thumbprint of the key as it is re-encoded here, so one key has one jkt however its JWK was written.
    known = (key, public_jwk(key.key, jws.alg)["kid"])
    if len(header) <= _PROOF_HEADER_KEPT_LENGTH:
        if len(_PROOF_KEYS) >= _PROOF_KEYS_MAX:
            _PROOF_KEYS.clear()
        _PROOF_KEYS[header] = known
    return known


def parse_dpop_proof(proof: Any) -> DPoPProof:
    """RFC 9449 §4.3: a single compact JWS (item 2) with typ dpop+jwt (4), an accepted asymmetric alg (5), a
    `jwk` header holding a public key only (7) with which the signature verifies (6); else InvalidDPoPProof."""
    try:
        jws = parse_jws(proof, (DPOP_TYPE,), noun="DPoP proof")
        key, jkt = _proof_key(jws)
        return DPoPProof(verify_signature(jws, key), jkt)
    except JwkError as exc:
        raise InvalidDPoPProof(f"DPoP proof jwk is not usable: {exc}") from None
    except InvalidDPoPProof:
        raise
    except InvalidToken as exc:
        raise InvalidDPoPProof(str(exc)) from None


def sign_dpop_proof(key: Any, alg: str, claims: dict[str, Any]) -> str:
    """A DPoP proof (RFC 9449 §4.2) of `claims`, signed by the private `key`, with its public JWK in the header."""
    jwk = _JWA[alg].to_jwk(key.public_key(), as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    return jwt.encode(claims, key, algorithm=alg, headers={"typ": DPOP_TYPE, "jwk": jwk})


# ---- claims -----------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClaimCheck:
    """The checks of a JWT's registered claims (RFC 7519 §4.1), the same for every caller.

    `required` claims must be present, `strings` present and non-empty strings; `exp`, `nbf` and `iat`
    must be numbers; `iss` must equal `issuer` and `aud` contain `audience` when those are given.
    `leeway` absorbs other parties' clock skew on every time claim; `skew` widens only the not-before side
    (`nbf`, `iat`), for a clock that may run slightly ahead of ours.
    """

    issuer: str | None = None
    audience: str | None = None
    required: tuple[str, ...] = ("exp",)
    strings: tuple[str, ...] = ()
    leeway: float = 0.0
    skew: float = 0.0
    noun: str = "token"

    def check(self, claims: dict[str, Any], now: float) -> None:
        """Raise an InvalidToken subclass naming the first claim that fails."""
        noun = self.noun
        for name in self.required:
            if name not in claims:
                raise MissingClaim(f"{noun} lacks the {name} claim")
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _is_number(claims[name]):
                raise MissingClaim(f"{noun} {name} is not a number")
        for name in self.strings:
            if name not in claims:
                raise MissingClaim(f"{noun} lacks the {name} claim")
            if not isinstance(claims[name], str) or not claims[name]:
                raise MissingClaim(f"{noun} {name} must be a non-empty string")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise WrongIssuer(f"{noun} issuer does not match")
        if self.audience is not None:
            aud = claims.get("aud")
            if self.audience not in (aud if isinstance(aud, list) else [aud]):
                raise WrongAudience(f"{noun} audience does not match")
        self.check_expiry(claims, now)
        if claims.get("nbf", 0) > now + self.leeway + self.skew:
            raise ImmatureToken(f"{noun} is not valid yet")
        if claims.get("iat", 0) > now + self.leeway + self.skew:
            raise ImmatureToken(f"{noun} iat is in the future")

    def check_expiry(self, claims: dict[str, Any], now: float) -> None:
        """Raise ExpiredToken once `exp` lies `leeway` seconds in the past."""
        if "exp" in claims and claims["exp"] <= now - self.leeway:
            raise ExpiredToken(f"{self.noun} has expired")


def actors(claims: dict[str, Any]) -> list[str]:
    """The actor chain of a token (RFC 8693 §4.1, `act` within `act`): the current actor first; [] for a token
    without `act`, that is a direct call. Anything but an object with a string `sub` ends the chain."""
    chain: list[str] = []
    act = claims.get("act")
    while isinstance(act, dict) and isinstance(act.get("sub"), str) and len(chain) < MAX_JSON_DEPTH:
        chain.append(act["sub"])
        act = act.get("act")
    return chain
