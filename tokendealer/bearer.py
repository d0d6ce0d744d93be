"""Bearer access tokens presented to this server's own management endpoints (RFC 6750): the admin API and
dynamic registration accept tokens this server issued, checked by the rules of client_lib's `TokenVerifier`
(its I/O-free core, `Verification`: the server eats its own dog food without loading an HTTP client into its
workers) against the in-memory keyring, then against the server's own state."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from client_lib.core.verification import Verification
from client_lib.exceptions import InvalidToken as ClientLibInvalidToken

from .authentication import FailureThrottle
from .errors import BearerTokenRequired, InsufficientScope, TemporarilyUnavailable
from .keyring import KeyringSource
from .tokens import INSTANCE_SKEW, TokenRejected, TokenService

REALM = "tokendealer"


@dataclass(frozen=True)
class Caller:
    """Who presented a valid token: its client id and claims."""

    client_id: str
    claims: dict[str, Any]


def challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> dict[str, str]:
    """RFC 6750 §3 `WWW-Authenticate` header; no error code when the request carried no token (§3.1)."""
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + description.replace("\\", "").replace('"', "'") + '"')
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": "Bearer " + ", ".join(parts)}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer` header (RFC 6750 §2.1), None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class BearerGuard:
    """Admits a request whose bearer token this server issued for `audience` and that is valid now: known
    key and algorithm, typ, iss, aud, exp/nbf/iat by this server's clock (client_lib's `Verification`, the rules
    of TokenVerifier), not revoked, its
    client existing, enabled and the same incarnation (TokenService). Failed attempts count against the
    address in the failed-authentication throttle, so guessing costs the guesser a 429 past its limit."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        keys: KeyringSource,
        tokens: TokenService,
        throttle: FailureThrottle,
        clock: Callable[[], float] = time.time,
    ):
        self.audience = audience
        self.keys = keys
        self.tokens = tokens
        self.throttle = throttle
        self.clock = clock
        self._kids: tuple[str, ...] = ()
        # Our own tokens by our own clock (no leeway); `skew` allows only for sibling instances' clocks on nbf/iat.
        self.policy = Verification(issuer, audience, leeway=0.0, cooldown=0.0, stale_if_error=0.0, cache_size=10000, skew=INSTANCE_SKEW)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this server issued for the audience, by TokenVerifier's rules; a key-bound
        token is refused, since these endpoints take Bearer tokens only."""
        now = self.clock()
        self._take_published_keys(now)
        claims = self.policy.cached(token, now)
        if claims is None:
            claims = self.policy.complete(token, self.policy.parse(token), now)
        self.policy.binding(claims, token, "Bearer", None, None, None, now)
        return self.policy.result(claims, None)

    def _take_published_keys(self, now: float) -> None:
        """The keyring's published keys, taken whenever the set changes (a withdrawn key is refused at once)."""
        keyring = self.keys.current(check=True)
        if keyring is None:
            raise TemporarilyUnavailable("no keyring is loaded", headers={"Retry-After": "5"})
        published = keyring.published(now, self.tokens.max_token_lifetime)
        kids = tuple(r.kid for r in published)
        if kids != self._kids or self.policy.jwks.needs_refresh(now):
            self.policy.accept_keys({"keys": [r.jwk for r in published]}, None, now)
            self._kids = kids

    def caller(self, authorization: str | None, address: str | None, any_of: Iterable[str]) -> Caller:
        """The caller, when its token is valid and carries one of the scopes `any_of`; else raise 401
        (`invalid_token`, or 429 past the failure limit) or 403 (`insufficient_scope`)."""
        wanted = list(any_of)
        token = bearer_token(authorization)
        if token is None:
            self.refuse(address, None)
        try:
            claims = self.verify(token)
            self.tokens.check_state(claims)
        except (ClientLibInvalidToken, TokenRejected) as exc:
            self.refuse(address, str(exc))
        if "cnf" in claims:
            # The verification refuses a DPoP-bound token sent as Bearer; any other binding (an RFC 8705 certificate)
            # is one these endpoints cannot check, and a bound token used without its binding is refused.
            self.refuse(address, "a sender-constrained token cannot be used as a Bearer token here")
        if claims["aud"] not in (self.audience, [self.audience]):
            # A token also meant for a service (RFC 8707 lets one name several) would let that service, or
            # anyone it leaks to, manage the server: management tokens are for the management audience alone.
            self.refuse(address, "token must be for the admin audience alone")
        granted = str(claims.get("scope", "")).split()
        if not set(granted) & set(wanted):
            needed = " or ".join(wanted)
            # A valid client reaching for what it may not do is worth a line (its attempts are authenticated,
            # so they are its own to answer for; unauthenticated ones are bounded by the throttle instead).
            self.throttle.audit.emit("admin.refused", outcome="refused", client_id=claims["client_id"], needed=needed, remote_addr=address)
            raise InsufficientScope(
                f"the token lacks the {needed} scope", headers=challenge("insufficient_scope", f"{needed} scope required", wanted[0])
            )
        return Caller(client_id=claims["client_id"], claims=claims)

    def refuse(self, address: str | None, reason: str | None) -> NoReturn:
        """Answer a missing (`reason` None) or invalid token with 401 (RFC 6750 §3.1), counting the failure
        against the address: past its limit, 429 instead."""
        throttled = self.throttle.failed(None, address)
        if throttled:
            raise throttled
        if reason is None:
            raise BearerTokenRequired("a Bearer access token is required", headers=challenge())
        raise BearerTokenRequired(reason, headers=challenge("invalid_token", reason))
