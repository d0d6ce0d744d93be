"""client_lib: fetch and cache TokenDealer access tokens, and verify them locally."""

from typing import TYPE_CHECKING, Any

from .exceptions import (
    ActorNotAllowed,
    BoundTokenAsBearer,
    CertificateMismatch,
    DisallowedAlgorithm,
    DiscoveryError,
    ExpiredToken,
    FederatedTokenError,
    ImmatureToken,
    InsufficientScope,
    InvalidDPoPProof,
    InvalidSignature,
    InvalidToken,
    KeySetUnavailable,
    MalformedToken,
    MissingClaim,
    MissingToken,
    ReplayCacheUnavailable,
    RevokedToken,
    TokenClientError,
    TokenEndpointUnavailable,
    TokenRequestError,
    UnknownKey,
    UseDPoPNonce,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)

if TYPE_CHECKING:
    from .aio import AsyncTokenClient, AsyncTokenVerifier
    from .client import TokenAuth, TokenClient
    from .fastapi_auth import require_token_async
    from .flask_auth import require_token
    from .httpx_auth import HttpxTokenAuth
    from .jose import actors
    from .verifier import TokenVerifier

# The one version of both distributions (tokendealer-client and the tokendealer server), read by both builds.
__version__ = "1.0.0"

# Each part loads on first use: the Flask, async and FastAPI parts need the `flask` / `httpx` / `fastapi`
# extras, and the server, which imports client_lib.jose, never loads requests into the workers it forks.
_LAZY = {
    "TokenAuth": ("client", None),
    "TokenClient": ("client", None),
    "TokenVerifier": ("verifier", None),
    "AsyncTokenClient": ("aio", "httpx"),
    "AsyncTokenVerifier": ("aio", "httpx"),
    "HttpxTokenAuth": ("httpx_auth", "httpx"),
    "require_token": ("flask_auth", "flask"),
    "require_token_async": ("fastapi_auth", "fastapi"),
    "actors": ("jose", None),
}


def __getattr__(name: str) -> Any:
    """PEP 562: each part imported when first asked for."""
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        module, extra = _LAZY[name]
        try:
            return getattr(importlib.import_module(f".{module}", __name__), name)
        except ModuleNotFoundError as exc:
            if extra is None:
                raise
            raise ImportError(f"client_lib.{name} needs the {extra!r} extra (pip install './client_lib[{extra}]'): {exc}") from None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ActorNotAllowed",
    "BoundTokenAsBearer",
    "InvalidDPoPProof",
    "ReplayCacheUnavailable",
    "UseDPoPNonce",
    "actors",
    "AsyncTokenClient",
    "AsyncTokenVerifier",
    "CertificateMismatch",
    "HttpxTokenAuth",
    "require_token_async",
    "DisallowedAlgorithm",
    "DiscoveryError",
    "ExpiredToken",
    "FederatedTokenError",
    "ImmatureToken",
    "InsufficientScope",
    "InvalidSignature",
    "InvalidToken",
    "KeySetUnavailable",
    "MalformedToken",
    "MissingClaim",
    "MissingToken",
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
