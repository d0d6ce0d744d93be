"""The OAuth endpoints as plain objects: parameters in, a JSON-able result out, or an OAuthError raised.

Token (RFC 6749 §4.4 with RFC 8707 resources), introspection (RFC 7662) and revocation (RFC 7009).
The Flask views in `app` only translate HTTP to these calls.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .audit import AuditLog
from .authentication import ClientAuthenticator
from .clients import SCOPE_TOKEN_RE, Client
from .errors import InvalidRequest, InvalidScope, InvalidTarget, OAuthError, UnsupportedGrantType
from .messages import TokenQuery, TokenRequest
from .metrics import Metrics
from .tokens import TokenRejected, TokenService

GRANT_TYPE = "client_credentials"
MAX_RESOURCES = 16


class TokenEndpoint:
    """RFC 6749 §4.4: the client-credentials grant."""

    def __init__(self, authenticator: ClientAuthenticator, tokens: TokenService, audit: AuditLog, metrics: Metrics):
        self.authenticator = authenticator
        self.tokens = tokens
        self.audit = audit
        self.metrics = metrics

    def create_token_response(self, request: TokenRequest) -> dict[str, Any]:
        """Validate the request (§4.4.2), authenticate the client, issue the token (§4.4.3, RFC 9068)."""
        context: dict[str, Any] = {"remote_addr": request.auth.address}
        authenticated = ""
        try:
            if request.grant_type != GRANT_TYPE:
                raise UnsupportedGrantType(f"only {GRANT_TYPE} is supported")
            client, creds = self.authenticator.authenticate(request.auth)
            context["client_id"] = authenticated = client.client_id
            scopes = self.resolve_scopes(client, request.scope)
            audiences = self.resolve_audiences(client, request.audience, request.resources)
            context.update(scope=" ".join(scopes), audience=audiences)
            token, claims = self.tokens.issue(client, audiences, scopes)
        except OAuthError as exc:
            context.setdefault("client_id", exc.client_id)
            if not exc.logged:
                self.audit.emit("token.refused", outcome="refused", error=exc.error, **context)
            # Only authenticated ids become labels, so made-up ids cannot grow the series without bound.
            self.metrics.tokens_refused.labels(authenticated, exc.error).inc()
            raise
        self.audit.emit("token.issued", outcome="issued", jti=claims["jti"], auth_method=creds.method, **context)
        self.metrics.tokens_issued.labels(client.client_id).inc()
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": claims["exp"] - claims["iat"],
            "scope": claims["scope"],
        }

    @staticmethod
    def resolve_scopes(client: Client, requested: str | None) -> list[str]:
        """RFC 6749 §3.3: the requested scopes if all are allowed, or the client's defaults when absent."""
        if requested is None or not requested.strip():
            return list(client.granted_scopes())
        scopes: list[str] = []
        for token in requested.split(" "):
            if not token:
                continue
            if not SCOPE_TOKEN_RE.match(token) or len(token) > 256:
                raise InvalidScope("scope is malformed")
            if token not in client.scopes:
                raise InvalidScope(f"scope {token!r} is not allowed for this client")
            if token not in scopes:
                scopes.append(token)
        return scopes

    @staticmethod
    def resolve_audiences(client: Client, audience: str | None, resources: tuple[str, ...]) -> list[str]:
        """RFC 8707 §2: each `resource` (absolute URI) or `audience` must be allowed; else the default."""
        if len(resources) > MAX_RESOURCES:
            raise InvalidTarget("too many resource parameters")
        for resource in resources:
            parts = urlsplit(resource)
            if not parts.scheme or parts.fragment:
                raise InvalidTarget("resource must be an absolute URI without a fragment")
        requested = [a for a in [audience, *resources] if a is not None]
        if not requested:
            default = client.granted_audience()
            if default is None:
                raise InvalidRequest("audience or resource is required: this client has several audiences and no default")
            return [default]
        audiences: list[str] = []
        for value in requested:
            if value not in client.audiences:
                raise InvalidTarget("requested audience is not allowed for this client")
            if value not in audiences:
                audiences.append(value)
        return audiences


class IntrospectionEndpoint:
    """RFC 7662: any authenticated client may ask whether a token is active."""

    def __init__(self, authenticator: ClientAuthenticator, tokens: TokenService):
        self.authenticator = authenticator
        self.tokens = tokens

    def introspect(self, query: TokenQuery) -> dict[str, Any]:
        self.authenticator.authenticate(query.auth)
        try:
            claims = self.tokens.validate(query.required_token())
        except TokenRejected:
            return {"active": False}
        return {"active": True, "token_type": "Bearer", **claims}


class RevocationEndpoint:
    """RFC 7009: a client revokes a token issued to itself; anything else is answered 200 and ignored."""

    def __init__(self, authenticator: ClientAuthenticator, tokens: TokenService, audit: AuditLog):
        self.authenticator = authenticator
        self.tokens = tokens
        self.audit = audit

    def revoke(self, query: TokenQuery) -> None:
        client, _ = self.authenticator.authenticate(query.auth)
        address = query.auth.address
        try:
            claims = self.tokens.validate(query.required_token(), check_state=False)
        except TokenRejected:
            return
        if claims["client_id"] != client.client_id:
            self.audit.emit("token.revoke_refused", outcome="refused", client_id=client.client_id, remote_addr=address)
            return
        self.tokens.revoke(claims)
        self.audit.emit("token.revoked", outcome="revoked", client_id=client.client_id, jti=claims["jti"], remote_addr=address)
