"""Where a token may be sent: the one origin (RFC 6454) it was obtained for, never another."""

from __future__ import annotations

import copy
import threading
from typing import Generic, Self, TypeVar
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> tuple[str, str, int]:
    """The (scheme, host, port) origin of an http(s) URL (RFC 6454 §4), default port filled in; ValueError without one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    return scheme, parts.hostname, DEFAULT_PORTS[scheme] if parts.port is None else parts.port


class OriginPin:
    """The one origin a token may be sent to, so a token never reaches another: the one given, or else
    that of the first URL asked about."""

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


ClientT = TypeVar("ClientT")


class PinnedAuth(Generic[ClientT]):
    """What the requests and httpx auth classes share: the client they get tokens from, what the tokens
    are for, the one origin they may go to, and, for a call made on a caller's behalf, the token to exchange."""

    def __init__(self, client: ClientT, audience: str | None = None, scope: str | None = None, *, origin: str | None = None):
        self.client = client
        self.audience = audience
        self.scope = scope
        self.pin = OriginPin(origin)
        self.subject_token: str | None = None

    def on_behalf_of(self, incoming_token: str) -> Self:
        """This auth for a call made for the caller of `incoming_token`: the token it sends is `incoming_token`
        exchanged (RFC 8693) for this audience and scope. It is pinned to this auth's origin."""
        auth = copy.copy(self)  # the same pin, so the exchanged token goes to this origin only
        auth.subject_token = incoming_token
        return auth
