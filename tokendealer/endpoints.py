"""The OAuth endpoints as plain objects: a parsed request in, a JSON-able result out, or an OAuthError raised.

Token (RFC 6749 §3.2, each grant in `grants`), introspection (RFC 7662) and revocation (RFC 7009).
The Flask views in `app` only translate HTTP to these calls.
"""

from __future__ import annotations

from typing import Any

from client_lib.core.certificates import THUMBPRINT
from client_lib.jose import actors

from . import tracing
from .audit import AuditLog
from .authentication import ClientAuthenticator
from .errors import OAuthError, UnsupportedGrantType
from .grants import Grant
from .messages import TokenQuery, TokenRequest
from .metrics import Metrics
from .tokens import TokenRejected, TokenService, token_type


class TokenEndpoint:
    """RFC 6749 §3.2: the token endpoint hands each request to the grant its grant_type names, and answers,
    audits and counts every outcome the same way."""

    def __init__(self, grants: list[Grant], audit: AuditLog, metrics: Metrics):
        self.grants = {grant.grant_type: grant for grant in grants}
        self.audit = audit
        self.metrics = metrics

    @property
    def grant_types(self) -> list[str]:
        return list(self.grants)

    def create_token_response(self, request: TokenRequest) -> dict[str, Any]:
        """The token response (RFC 6749 §5.1), or an OAuthError (§5.2); audited and counted either way."""
        context: dict[str, Any] = {"remote_addr": request.auth.address}
        tracing.annotate_request(grant_type=request.grant_type)
        try:
            grant = self.grants.get(request.grant_type)
            if grant is None:
                raise UnsupportedGrantType(f"grant_type must be one of: {', '.join(self.grants)}")
            issued = grant.issue(request, context)
        except OAuthError as exc:
            # Only authenticated ids become labels, so made-up ids cannot grow the series without bound.
            authenticated = context.get("client_id", "")
            context.setdefault("client_id", exc.client_id)
            if not exc.logged:
                self.audit.emit("token.refused", outcome="refused", error=exc.error, **context)
            self.metrics.tokens_refused.labels(authenticated, exc.error).inc()
            raise
        claims = issued.claims
        tracing.annotate_request(client_id=issued.client_id)  # also for grants that authenticate no client
        cnf = claims.get("cnf") or {}
        kind = issued.token_type
        # The thumbprints a bound token names (of a key, of a certificate: never the proof or the certificate).
        if kind == "DPoP":
            context["jkt"] = cnf["jkt"]
            self.metrics.dpop_tokens.labels(issued.client_id).inc()
        if THUMBPRINT in cnf:
            context["x5t#S256"] = cnf[THUMBPRINT]
            self.metrics.certificate_bound_tokens.labels(issued.client_id).inc()
        self.audit.emit(issued.event, outcome="issued", jti=claims["jti"], auth_method=issued.auth_method, **context)
        self.metrics.tokens_issued.labels(issued.client_id).inc()
        if "federation_rule" in context:
            self.metrics.federated_tokens.labels(issued.client_id, context["issuer"], context["federation_rule"]).inc()
        return {
            "access_token": issued.token,
            "token_type": kind,
            "expires_in": claims["exp"] - claims["iat"],
            "scope": claims["scope"],
            **issued.extra,
        }


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
        return {"active": True, "token_type": token_type(claims), **claims}


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
        # The token's client, or for an exchanged token (RFC 8693) also the actor that obtained it.
        if client.client_id not in (claims["client_id"], *actors(claims)[:1]):
            self.audit.emit("token.revoke_refused", outcome="refused", client_id=client.client_id, remote_addr=address)
            return
        self.tokens.revoke(claims)
        self.audit.emit("token.revoked", outcome="revoked", client_id=client.client_id, jti=claims["jti"], remote_addr=address)
