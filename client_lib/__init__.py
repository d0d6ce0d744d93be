"""client_lib: fetch and cache TokenDealer access tokens, and verify them locally."""

from .client import TokenAuth, TokenClient
from .core import actors
from .exceptions import (
    ActorNotAllowed,
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
from .flask_auth import require_token
from .verifier import TokenVerifier

# The async and FastAPI parts need the `httpx` / `fastapi` extras, so they load on first use.
_LAZY = {
    "AsyncTokenClient": "aio",
    "AsyncTokenVerifier": "aio",
    "HttpxTokenAuth": "httpx_auth",
    "require_token_async": "fastapi_auth",
}


def __getattr__(name: str):  # noqa: ANN202 (PEP 562 module attribute)
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ActorNotAllowed",
    "actors",
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
