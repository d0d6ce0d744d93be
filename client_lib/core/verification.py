"""What makes a JWT an acceptable access token for one issuer and audience (RFC 9068 §4), and the
verified-token cache; the sync and async verifiers only fetch keys and lock around this."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from ..exceptions import (
    ActorNotAllowed,
    BoundTokenAsBearer,
    ExpiredToken,
    InsufficientScope,
    InvalidDPoPProof,
    InvalidToken,
    KeySetUnavailable,
    UnknownKey,
)
from ..jose import ACCESS_TOKEN_TYPES, ClaimCheck, CompactJws, DPoPProof, actors, parse_dpop_proof, parse_jws, verify_signature
from .certificates import check_binding
from .dpop import ProofCheck
from .jwks import JwksState

# RFC 9068 §2.2: claims every access token carries (a missing iss or aud fails as WrongIssuer/WrongAudience);
# sub, client_id and jti as non-empty strings.
REQUIRED_CLAIMS = ("exp", "iat")
STRING_CLAIMS = ("sub", "client_id", "jti")


def check_actors(claims: dict[str, Any], actor: str | None, no_actor: bool | str | Iterable[str]) -> None:
    """RFC 8693 §4.1: raise ActorNotAllowed unless the current actor is `actor` (when given) and, with
    `no_actor`, the token is a direct call (True) or names none of the given actors anywhere in its chain."""
    chain = actors(claims)
    if actor is not None and (not chain or chain[0] != actor):
        raise ActorNotAllowed(f"the token's current actor is not {actor}")
    if no_actor is True and chain:
        raise ActorNotAllowed("the token was obtained by an actor; only direct calls are accepted")
    if no_actor and no_actor is not True:
        refused = {no_actor} if isinstance(no_actor, str) else set(no_actor)
        if refused & set(chain):
            raise ActorNotAllowed("the token's delegation chain names a refused actor")


def check_scopes(claims: dict[str, Any], required: Iterable[str] | None) -> None:
    """Raise InsufficientScope unless every required scope is in the token's `scope`."""
    if not required:
        return
    granted = claims.get("scope", "")
    granted_set = set(granted.split()) if isinstance(granted, str) else set()
    missing = [s for s in required if s not in granted_set]
    if missing:
        raise InsufficientScope(f"token lacks scope {' '.join(missing)}")


def bound_key(claims: dict[str, Any]) -> str | None:
    """The `cnf.jkt` a token is bound to (RFC 9449 §6.1), or None."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) else None


class VerifiedCache:
    """token -> claims for tokens already verified, until their exp; bounded in size (oldest dropped)."""

    def __init__(self, check: ClaimCheck, size: int = 10000):
        self.check = check
        self.size = size
        self._entries: dict[str, dict[str, Any]] = {}

    def get(self, token: str, now: float) -> dict[str, Any] | None:
        claims = self._entries.get(token)
        if claims is None:
            return None
        try:
            self.check.check_expiry(claims, now)
        except ExpiredToken:
            self._entries.pop(token, None)
            raise
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

    def __init__(
        self,
        issuer: str,
        audience: str,
        leeway: float,
        cooldown: float,
        stale_if_error: float,
        cache_size: int,
        skew: float = 0.0,
        proofs: ProofCheck | None = None,
    ):
        self.issuer = issuer
        self.proofs = proofs or ProofCheck()
        self.audience = audience
        self.leeway = leeway
        self.claims = ClaimCheck(
            issuer=issuer, audience=audience, required=REQUIRED_CLAIMS, strings=STRING_CLAIMS, leeway=leeway, skew=skew
        )
        self.jwks = JwksState(cooldown=cooldown, stale_if_error=stale_if_error)
        self.verified = VerifiedCache(self.claims, cache_size)
        self._active: dict[str, float] = {}

    @staticmethod
    def parse(token: Any) -> CompactJws:
        """A token split and decoded, refused unless a compact JWS with typ at+jwt and an accepted algorithm."""
        return parse_jws(token, ACCESS_TOKEN_TYPES)

    def cached(self, token: Any, now: float) -> dict[str, Any] | None:
        """Claims of a token verified before and not expired since."""
        return self.verified.get(token, now) if isinstance(token, str) else None

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
        key = self.jwks.lookup(jws.kid, now)
        if key is None:
            if not self.jwks.usable(now):
                raise KeySetUnavailable("the issuer's keys could not be fetched")
            raise UnknownKey("token was signed by a key the issuer does not publish")
        claims = verify_signature(jws, key)
        self.claims.check(claims, now)
        self.verified.put(token, claims)
        return claims

    def binding(
        self, claims: dict[str, Any], token: str, scheme: str | None, proof: str | None, method: str | None, url: str | None, now: float
    ) -> DPoPProof | None:
        """RFC 9449 §7: a DPoP-bound token only with the DPoP scheme and a valid proof for this method and URL,
        signed by the bound key, carrying the token's hash; an unbound token only as Bearer. `scheme` None
        means DPoP when a proof is given, else Bearer. The proof, for the shell's replay check, or None."""
        scheme = (scheme or ("DPoP" if proof is not None else "Bearer")).lower()
        jkt = bound_key(claims)
        if scheme == "bearer":
            if jkt is not None:
                raise BoundTokenAsBearer("token is DPoP-bound and was presented as a bearer token")
            return None
        if scheme != "dpop":
            raise InvalidToken("unsupported authorization scheme")
        if jkt is None:
            raise InvalidToken("token is not DPoP-bound; present it as a Bearer token")
        if proof is None:
            raise InvalidDPoPProof("a DPoP proof is required with a DPoP-bound token")
        if method is None or url is None:
            raise TypeError("verify() needs method= and url= to check a DPoP proof")
        checked = parse_dpop_proof(proof)
        if not hmac.compare_digest(checked.jkt, jkt):
            raise InvalidDPoPProof("DPoP proof is not signed by the key the token is bound to")
        self.proofs.check(checked, method.upper(), url, now, access_token=token)
        return checked

    def known_active(self, jti: str, now: float) -> bool:
        return self._active.get(jti, 0) > now

    def remember_active(self, jti: str, until: float) -> None:
        if len(self._active) > 10000:
            self._active.clear()
        self._active[jti] = until

    @staticmethod
    def result(
        claims: dict[str, Any],
        scopes: Iterable[str] | None,
        actor: str | None = None,
        no_actor: bool | str | Iterable[str] = False,
        *,
        client_cert: Any = None,
    ) -> dict[str, Any]:
        """The claims to hand out, once the token's binding (on every call: a cached token too), scopes and
        delegation chain are accepted."""
        check_binding(claims, client_cert)
        check_scopes(claims, scopes)
        check_actors(claims, actor, no_actor)
        return dict(claims)
