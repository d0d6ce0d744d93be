"""RFC 6749 §4.4: the client-credentials grant."""

from __future__ import annotations

from typing import Any

from ..authentication import ClientAuthenticator
from ..dpop import DPoPBinding
from ..messages import TokenRequest
from ..tokens import TokenService
from . import Issued, confirmation, resolve_audiences, resolve_scopes


class ClientCredentialsGrant:
    """§4.4.2: authenticate the client; grant the scopes and audiences it asks for within its own (or its
    defaults); §4.4.3: an RFC 9068 access token."""

    grant_type = "client_credentials"

    def __init__(self, authenticator: ClientAuthenticator, tokens: TokenService, dpop: DPoPBinding):
        self.authenticator = authenticator
        self.tokens = tokens
        self.dpop = dpop

    def issue(self, request: TokenRequest, context: dict[str, Any]) -> Issued:
        client, creds = self.authenticator.authenticate(request.auth)
        context.update(client_id=client.client_id, **creds.audit_fields())
        scopes = resolve_scopes(client, request.scope)
        audiences = resolve_audiences(client, request.audience, request.resources)
        context.update(scope=" ".join(scopes), audience=audiences)
        token, claims = self.tokens.issue(client, audiences, scopes, confirmation(self.dpop, request, client))
        return Issued(token, claims, client.client_id, creds.method)
