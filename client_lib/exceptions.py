"""client_lib's exceptions: `InvalidToken` for tokens that must be refused, `TokenClientError` for fetching."""

from __future__ import annotations


class InvalidToken(Exception):
    """A presented token must be refused. `error` is the RFC 6750 §3.1 code to answer with; `description`
    the fixed ASCII text a challenge gives for this class, never text from the token (the message may hold more)."""

    error = "invalid_token"
    status = 401
    description = "a valid bearer token is required"


class MissingToken(InvalidToken):
    """The request carries no token in a scheme this service accepts; its challenge has no error code
    (RFC 6750 §3.1: the caller may not have known authentication was needed)."""

    description = "a bearer or DPoP token is required"


class MalformedToken(InvalidToken):
    """Not a compact JWS with a JSON header and payload."""

    description = "the token is not a well-formed JWT"


class WrongTokenType(InvalidToken):
    """The `typ` header is not exactly `at+jwt` or `application/at+jwt` (RFC 9068 §4), as the server requires."""

    description = "the token typ is not at+jwt"


class DisallowedAlgorithm(InvalidToken):
    """`none`, HMAC, or an algorithm that does not match the key."""

    description = "the token algorithm is not accepted"


class UnknownKey(InvalidToken):
    """No key in the issuer's JWKS has this `kid`."""

    description = "the token signing key is unknown"


class InvalidSignature(InvalidToken):
    """The signature does not verify."""

    description = "the token signature is invalid"


class ExpiredToken(InvalidToken):
    """`exp` has passed (beyond the leeway)."""

    description = "the token has expired"


class ImmatureToken(InvalidToken):
    """`nbf` or `iat` lies in the future (beyond the leeway)."""

    description = "the token is not valid yet"


class WrongIssuer(InvalidToken):
    """`iss` is not the configured issuer."""

    description = "the token issuer is not trusted"


class WrongAudience(InvalidToken):
    """`aud` does not contain the configured audience."""

    description = "the token is not meant for this audience"


class MissingClaim(InvalidToken):
    """A required claim (`sub`, `client_id`, `jti`, …) is absent or of the wrong type."""

    description = "the token lacks a required claim"


class RevokedToken(InvalidToken):
    """Introspection says the token is no longer active."""

    description = "the token is no longer active"


class InsufficientScope(InvalidToken):
    """The token is valid but lacks a required scope (RFC 6750 §3.1: 403)."""

    error = "insufficient_scope"
    status = 403
    description = "the token lacks a required scope"


class ActorNotAllowed(InvalidToken):
    """The token is valid but its delegation chain (RFC 8693 `act`) is not the one this service accepts (403)."""

    error = "insufficient_scope"
    status = 403
    description = "the token's delegation chain is not accepted here"


class InvalidDPoPProof(InvalidToken):
    """The DPoP proof (RFC 9449 §4.3) is missing, malformed, or does not match the request or the token's key."""

    error = "invalid_dpop_proof"
    description = "a valid DPoP proof is required"


class UseDPoPNonce(InvalidDPoPProof):
    """The proof lacks the nonce the server asks for (RFC 9449 §8, §9); `nonce` is the one to use."""

    error = "use_dpop_nonce"
    description = "resend the request with a DPoP proof carrying the nonce in DPoP-Nonce"

    def __init__(self, message: str, nonce: str):
        super().__init__(message)
        self.nonce = nonce


class BoundTokenAsBearer(InvalidToken):
    """A DPoP-bound token (RFC 9449 §6, `cnf.jkt`) was presented as a plain bearer token (§7.1 forbids it)."""

    description = "this token is DPoP-bound: present it with the DPoP scheme and a proof"


class KeySetUnavailable(InvalidToken):
    """No keys could be had from the issuer, so nothing can be verified (the token may be fine)."""

    status = 503
    description = "the issuer keys are unavailable, try again later"


class ReplayCacheUnavailable(KeySetUnavailable):
    """The shared DPoP replay cache did not answer, so no proof can be judged fresh (the request may be fine)."""

    description = "the DPoP replay cache is unavailable, try again later"


class TokenClientError(Exception):
    """Fetching a token failed."""


class FederatedTokenError(TokenClientError):
    """The workload token file given as `federated_token_file` cannot be read, is not a JWT, or has expired."""


class DiscoveryError(TokenClientError):
    """The issuer's metadata could not be fetched or does not match the issuer."""


class TokenEndpointUnavailable(TokenClientError):
    """The token endpoint did not answer usefully within the retries (network error, 5xx, 429)."""


class TokenRequestError(TokenClientError):
    """The server refused the request (4xx); `error` and `error_description` are the server's."""

    def __init__(self, error: str, description: str | None = None, status: int | None = None):
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.error_description = description
        self.status = status


class CertificateMismatch(InvalidToken):
    """The token is bound to a client certificate (RFC 8705 §3) that was not presented, or another one was."""

    description = "the token is bound to a client certificate this request did not present"
