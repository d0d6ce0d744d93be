"""Tokens held by a client: the request form, the checked response, the cache and its refresh timing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import MalformedToken, TokenRequestError
from ..jose import json_object

REFRESH_MARGIN = 300.0
# (audience, scope) for a client's own tokens; (EXCHANGE_GRANT, subject jti, subject digest, audience, scope)
# for exchanged ones.
CacheKey = tuple[str | None, ...]
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


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


def token_form(audience: str | None, scope: str | None) -> dict[str, str]:
    """The body of a client-credentials request (RFC 6749 §4.4.2)."""
    form = {"grant_type": "client_credentials"}
    if audience:
        form["audience"] = audience
    if scope:
        form["scope"] = scope
    return form


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
        jti = json_object(subject_token.split(".")[1], "token payload").get("jti")
    except (MalformedToken, IndexError):
        jti = None
    digest = hashlib.sha256(subject_token.encode("utf-8", "surrogatepass")).hexdigest()
    return (EXCHANGE_GRANT, jti if isinstance(jti, str) else None, digest, audience, scope)


def token_response(data: Any, token_type: str = "Bearer") -> dict[str, Any]:
    """Check a token endpoint's 200 body (RFC 6749 §5.1) and return it; `token_type` is the one asked for
    (RFC 9449 §5: DPoP when a proof went with the request, so a server that ignored it is noticed)."""
    if not isinstance(data, dict) or not isinstance(data.get("access_token"), str) or not data["access_token"]:
        raise ValueError("response has no access_token")
    if str(data.get("token_type", "")).lower() != token_type.lower():
        raise ValueError(f"token_type is not {token_type}")
    expires_in = data.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
        raise ValueError("expires_in is missing or not positive")
    return data


def dpop_key(key: CacheKey, dpop: bool) -> CacheKey:
    """The cache key of a DPoP-bound token: apart from every bearer token's."""
    return ("DPoP", *key) if dpop else key


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


class TokenCache:
    """One token per key and the decisions about it; the shells do the locking and I/O. Exchanged tokens
    have a key per incoming token, so the cache is bounded: past `size` entries, expired ones go first, then
    the oldest."""

    def __init__(self, size: int = 10000) -> None:
        self.size = size
        self._entries: dict[CacheKey, CachedToken] = {}

    def fresh(self, key: CacheKey, now: float) -> str | None:
        """The token if it is not stale yet."""
        entry = self._entries.get(key)
        return entry.access_token if entry is not None and now < entry.stale_at else None

    def usable(self, key: CacheKey, now: float) -> str | None:
        """The token if it has not expired, stale or not."""
        entry = self._entries.get(key)
        return entry.access_token if entry is not None and now < entry.expires_at else None

    def store(self, key: CacheKey, response: dict[str, Any], requested_at: float) -> str:
        """Keep the token of a response to a request made at `requested_at`, and return it."""
        entry = CachedToken.from_response(response, requested_at)
        self._entries.pop(key, None)
        if len(self._entries) >= self.size:
            self._entries = {k: e for k, e in self._entries.items() if requested_at < e.expires_at}
            while len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
        self._entries[key] = entry
        return entry.access_token

    def invalidate(self, token: str) -> None:
        """Forget `token` wherever it is cached."""
        for key, entry in list(self._entries.items()):
            if entry.access_token == token:
                self._entries.pop(key, None)
