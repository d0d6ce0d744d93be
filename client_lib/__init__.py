"""client_lib: fetch and cache TokenDealer access tokens, and verify them locally."""

from typing import Any

from .client import TokenAuth, TokenClient
from .exceptions import (
    DisallowedAlgorithm,
    DiscoveryError,
    ExpiredToken,
    ImmatureToken,
    InsufficientScope,
    InvalidSignature,
    InvalidToken,
    KeySetUnavailable,
    MalformedToken,
    MissingClaim,
    RevokedToken,
    TokenClientError,
    TokenEndpointUnavailable,
    TokenRequestError,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from .verifier import TokenVerifier

# The one version of both distributions (tokendealer-client and the tokendealer server), read by both builds.
__version__ = "1.0.0"

# The Flask, async and FastAPI parts need the `flask` / `httpx` / `fastapi` extras, so they load on first use.
_LAZY = {
    "AsyncTokenClient": ("aio", "httpx"),
    "AsyncTokenVerifier": ("aio", "httpx"),
    "HttpxTokenAuth": ("httpx_auth", "httpx"),
    "require_token": ("flask_auth", "flask"),
    "require_token_async": ("fastapi_auth", "fastapi"),
}


def __getattr__(name: str) -> Any:
    """PEP 562: the optional parts, imported when first asked for."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        module, extra = _LAZY[name]
        try:
            return getattr(importlib.import_module(f".{module}", __name__), name)
        except ModuleNotFoundError as exc:
            raise ImportError(f"client_lib.{name} needs the {extra!r} extra (pip install './client_lib[{extra}]'): {exc}") from None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncTokenClient",
    "AsyncTokenVerifier",
    "HttpxTokenAuth",
    "require_token_async",
    "DisallowedAlgorithm",
    "DiscoveryError",
    "ExpiredToken",
    "ImmatureToken",
    "InsufficientScope",
    "InvalidSignature",
    "InvalidToken",
    "KeySetUnavailable",
    "MalformedToken",
    "MissingClaim",
    "RevokedToken",
    "TokenAuth",
    "TokenClient",
    "TokenClientError",
    "TokenEndpointUnavailable",
    "TokenRequestError",
    "TokenVerifier",
    "UnknownKey",
    "WrongAudience",
    "WrongIssuer",
    "WrongTokenType",
    "require_token",
]
