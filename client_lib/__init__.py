"""client_lib: fetch and cache TokenDealer access tokens, and verify them locally."""

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
from .flask_auth import require_token
from .verifier import TokenVerifier

__all__ = [
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
