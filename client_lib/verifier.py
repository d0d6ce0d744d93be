"""TokenVerifier: verify access tokens locally against the issuer's JWKS (requests shell over `core`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

from .client import DEFAULT_TIMEOUT, TokenClient, discover
from .core import JwksState, VerifiedCache, check_claims, check_scopes, parse_token, verify_signature
from .exceptions import KeySetUnavailable, RevokedToken, TokenClientError, UnknownKey

log = logging.getLogger(__name__)


class TokenVerifier:
    """Checks RFC 9068 access tokens from one issuer for one audience.

    Keys come from the issuer's JWKS (via discovery unless `jwks_uri` is given), cached per its
    Cache-Control and kept when a refresh fails. Verified tokens are remembered until they expire.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_uri: str | None = None,
        leeway: float = 30.0,
        cooldown: float = 30.0,
        stale_if_error: float = 86400.0,
        cache_size: int = 10000,
        introspect: bool = False,
        introspection_client: TokenClient | None = None,
        introspection_cache: float = 5.0,
        session: requests.Session | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ):
        if introspect and introspection_client is None:
            raise ValueError("introspect=True needs introspection_client (a TokenClient to authenticate with)")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.session = session or requests.Session()
        self.timeout = timeout
        self.clock = clock
        self.introspect = introspect
        self.introspection_client = introspection_client
        self.introspection_cache = introspection_cache
        self._jwks_uri = jwks_uri
        self._introspection_endpoint: str | None = None
        self.jwks = JwksState(cooldown=cooldown, stale_if_error=stale_if_error)
        self.verified = VerifiedCache(cache_size)
        self._active: dict[str, float] = {}
        self._fetch_lock = threading.Lock()
        self.fetch_count = 0

    def __repr__(self) -> str:
        return f"TokenVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    @property
    def jwks_uri(self) -> str:
        if self._jwks_uri is None:
            self._jwks_uri = discover(self.session, self.issuer, self.timeout)["jwks_uri"]
        return self._jwks_uri

    def verify(self, token: str, scopes: Iterable[str] | None = None) -> dict[str, Any]:
        """The token's claims, or an InvalidToken subclass saying why it is refused."""
        now = self.clock()
        claims = self.verified.get(token, now, self.leeway) if isinstance(token, str) else None
        if claims is None:
            claims = self._verify_cold(token, now)
            self.verified.put(token, claims)
        if self.introspect:
            self._check_active(token, claims, now)
        check_scopes(claims, scopes)
        return dict(claims)

    def _verify_cold(self, token: str, now: float) -> dict[str, Any]:
        jws = parse_token(token)
        key = self._key_for(jws.header.get("kid"), now)
        claims = verify_signature(jws, key)
        check_claims(claims, self.issuer, self.audience, now, self.leeway)
        return claims

    def _key_for(self, kid: Any, now: float) -> tuple[tuple[str, ...], Any]:
        state = self.jwks
        if state.needs_refresh(now):
            self._fetch(now, blocking=not state.usable(now))
        key = state.lookup(kid, now)
        if key is None and isinstance(kid, str) and state.may_fetch_for(kid, now):
            with self._fetch_lock:
                key = state.lookup(kid, now)
                if key is None and state.may_fetch_for(kid, now):
                    state.forced(now)
                    self._fetch_locked(now)
                    key = state.lookup(kid, now)
                    if key is None:
                        state.still_unknown(kid, now)
        if key is None:
            if not state.usable(now):
                raise KeySetUnavailable("the issuer's keys could not be fetched")
            raise UnknownKey("token was signed by a key the issuer does not publish")
        return key

    def _fetch(self, now: float, blocking: bool) -> None:
        """Refresh the key set; only one thread fetches, others keep using the cached keys."""
        if self._fetch_lock.acquire(blocking=blocking):
            try:
                if self.jwks.needs_refresh(now):
                    self._fetch_locked(now)
            finally:
                self._fetch_lock.release()

    def _fetch_locked(self, now: float) -> None:
        self.fetch_count += 1
        before = set(self.jwks.keys)
        try:
            response = self.session.get(self.jwks_uri, timeout=self.timeout)
            response.raise_for_status()
            self.jwks.accepted(response.json(), response.headers.get("Cache-Control"), now)
        except (requests.RequestException, ValueError, TokenClientError) as exc:
            self.jwks.failed(now)
            log.warning("JWKS fetch failed, keeping %d cached keys: %s", len(self.jwks.keys), exc.__class__.__name__)
            return
        if before - set(self.jwks.keys):
            # A key was withdrawn (emergency rotation): tokens it signed must be checked again.
            self.verified.clear()

    def _check_active(self, token: str, claims: dict[str, Any], now: float) -> None:
        """Ask the issuer (RFC 7662) whether the token is still active; answers kept briefly."""
        jti = claims["jti"]
        if self._active.get(jti, 0) > now:
            return
        client = self.introspection_client
        if self._introspection_endpoint is None:
            self._introspection_endpoint = client.metadata["introspection_endpoint"]
        fields, basic = client.client_auth(self._introspection_endpoint)
        try:
            response = self.session.post(self._introspection_endpoint, data={"token": token, **fields}, auth=basic, timeout=self.timeout)
            response.raise_for_status()
            active = response.json().get("active") is True
        except (requests.RequestException, ValueError, AttributeError):
            raise KeySetUnavailable("the issuer's introspection endpoint did not answer") from None
        if not active:
            raise RevokedToken("token is no longer active")
        if len(self._active) > 10000:
            self._active.clear()
        self._active[jti] = now + self.introspection_cache
