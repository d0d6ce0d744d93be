"""Tokens held by a client: the request form, the checked response, the cache and its refresh timing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..exceptions import TokenRequestError

REFRESH_MARGIN = 300.0
CacheKey = tuple[str | None, str | None]


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
    """One token per (audience, scope) and the decisions about it; the shells do the locking and I/O."""

    def __init__(self) -> None:
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
        self._entries[key] = entry
        return entry.access_token

    def invalidate(self, token: str) -> None:
        """Forget `token` wherever it is cached."""
        for key, entry in list(self._entries.items()):
            if entry.access_token == token:
                self._entries.pop(key, None)
