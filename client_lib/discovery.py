"""Authorization server metadata (RFC 8414, OIDC discovery as fallback): the check of an answer, and the
sync (requests) and async (httpx) fetches beside each other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests

from . import tracing
from .core.failures import network_failure
from .exceptions import DiscoveryError

if TYPE_CHECKING:
    import httpx

DISCOVERY_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")


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


def discover(session: requests.Session, issuer: str, timeout: Any) -> dict[str, Any]:
    """RFC 8414 metadata of `issuer` (OIDC discovery as fallback); its `issuer` must match exactly."""
    base = issuer.rstrip("/")
    for path in DISCOVERY_PATHS:
        try:
            response = session.get(base + path, timeout=timeout, headers=tracing.inject())
        except requests.RequestException as exc:
            raise DiscoveryError(f"cannot reach {base + path}: {network_failure(exc)}") from None
        metadata = discovered_metadata(issuer, base + path, response)
        if metadata is not None:
            return metadata
    raise DiscoveryError(f"no authorization server metadata at {base}")


async def discover_async(http: httpx.AsyncClient, issuer: str) -> dict[str, Any]:
    """The same as `discover` with httpx (the `httpx` extra)."""
    import httpx  # noqa: PLC0415 (an optional extra: only async callers have it)

    base = issuer.rstrip("/")
    for path in DISCOVERY_PATHS:
        try:
            response = await http.get(base + path, headers=tracing.inject())
        except httpx.HTTPError as exc:
            raise DiscoveryError(f"cannot reach {base + path}: {network_failure(exc)}") from None
        metadata = discovered_metadata(issuer, base + path, response)
        if metadata is not None:
            return metadata
    raise DiscoveryError(f"no authorization server metadata at {base}")
