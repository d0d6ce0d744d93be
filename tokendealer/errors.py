"""OAuth errors as classes carrying their RFC code and HTTP status (RFC 6749 §5.2)."""

from __future__ import annotations


class OAuthError(Exception):
    """An error the web layer answers as `{"error", "error_description"}` JSON."""

    error = "invalid_request"
    status = 400
    # The client id the request claimed, for the audit log (None when it named none).
    client_id: str | None = None
    # True when the refusal was already audited in aggregate (throttled failures), not per attempt.
    logged = False

    def __init__(self, description: str = "", headers: dict[str, str] | None = None):
        super().__init__(description)
        self.description = description
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        """The JSON body of the error response."""
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2: the presented grant (an assertion, or RFC 8693's subject token) is not valid for this client."""

    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2: the authenticated client may not use this grant type."""

    error = "unauthorized_client"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: the requested resource or audience is not allowed."""

    error = "invalid_target"


class InvalidToken(OAuthError):
    """A presented access token is not valid (used by /verify_token)."""

    error = "invalid_token"


class InvalidDPoPProof(OAuthError):
    """RFC 9449 §5: the token request's DPoP proof is missing (for a client that must send one) or not valid."""

    error = "invalid_dpop_proof"


class UseDPoPNonce(OAuthError):
    """RFC 9449 §8: the proof must carry the nonce this answer gives in its `DPoP-Nonce` header."""

    error = "use_dpop_nonce"


class BearerTokenRequired(OAuthError):
    """RFC 6750 §3.1: the bearer token is missing or wrong (401 with `WWW-Authenticate: Bearer`)."""

    error = "invalid_token"
    status = 401


class Forbidden(OAuthError):
    """The caller may not use this endpoint at all (403), whatever it presents."""

    error = "access_denied"
    status = 403


class NotFound(OAuthError):
    error = "not_found"
    status = 404


class RequestTooLarge(OAuthError):
    error = "invalid_request"
    status = 413


class RequestTimeout(OAuthError):
    """The request's body did not arrive within the body deadline (RFC 9110 §15.5.9)."""

    error = "invalid_request"
    status = 408


class TooManyRequests(OAuthError):
    """Rate limit exceeded; `Retry-After` says when to come back."""

    error = "slow_down"
    status = 429


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503


class ServerError(OAuthError):
    error = "server_error"
    status = 500


class InsufficientScope(OAuthError):
    """RFC 6750 §3.1: the bearer token is valid but lacks the scope the request needs (403)."""

    error = "insufficient_scope"
    status = 403


class InvalidClientMetadata(OAuthError):
    """RFC 7591 §3.2.2: a registration field's value is invalid."""

    error = "invalid_client_metadata"


class AlreadyExists(OAuthError):
    """The resource exists already (409)."""

    error = "conflict"
    status = 409


class PreconditionFailed(OAuthError):
    """RFC 9110 §15.5.13: the `If-Match` version is not the current one (412)."""

    error = "precondition_failed"
    status = 412


class PreconditionRequired(OAuthError):
    """RFC 6585 §3: the request must be conditional (`If-Match`), so no change overwrites an unseen one (428)."""

    error = "precondition_required"
    status = 428
