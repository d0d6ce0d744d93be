"""RFC 7523 §2.1: the JWT bearer grant, for workload tokens of trusted external issuers (SPEC §3, §4.1)."""

from __future__ import annotations

from typing import Any

from ..authentication import ClientAuthenticator
from ..dpop import DPoPBinding
from ..errors import InvalidGrant, InvalidRequest
from ..federation import FederationRefused, FederationVerifier
from ..messages import TokenRequest
from ..tokens import TokenService
from . import Issued, confirmation, resolve_audiences, resolve_scopes

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class JwtBearerGrant:
    """§2.1: the `assertion` is the only proof; the federation rule it matches names the client (a `client_id`
    parameter may narrow the choice), whose scopes, audiences and token lifetime then apply as usual.
    §3.1: an assertion that is not valid is `invalid_grant`, and counts as a failed authentication."""

    grant_type = GRANT_TYPE

    def __init__(self, federation: FederationVerifier, authenticator: ClientAuthenticator, tokens: TokenService, dpop: DPoPBinding):
        self.federation = federation
        self.authenticator = authenticator
        self.tokens = tokens
        self.dpop = dpop

    def issue(self, request: TokenRequest, context: dict[str, Any]) -> Issued:
        auth = request.auth
        if auth.authorization or auth.client_secret is not None or auth.assertion is not None or auth.assertion_type is not None:
            raise InvalidRequest("the jwt-bearer grant takes no client authentication: the assertion names the client")
        if not request.assertion:
            raise InvalidRequest("assertion is required")
        try:
            admission = self.federation.grant(request.assertion, auth.client_id)
        except FederationRefused as exc:
            refused = InvalidGrant(str(exc))
            self.authenticator.failed(refused, auth.client_id, auth.address)
            raise refused from None
        client = admission.client
        context.update(client_id=client.client_id, **admission.audit_fields())
        scopes = resolve_scopes(client, request.scope)
        audiences = resolve_audiences(client, request.audience, request.resources)
        context.update(scope=" ".join(scopes), audience=audiences)
        token, claims = self.tokens.issue(client, audiences, scopes, confirmation(self.dpop, request, client))
        return Issued(token, claims, client.client_id, "federated")
