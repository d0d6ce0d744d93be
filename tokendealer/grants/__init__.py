"""Grants at the token endpoint (RFC 6749 §4.4 and the extension grants): each is one small module that
turns a parsed `TokenRequest` into an `Issued` token or raises an OAuthError; the token endpoint answers,
audits and counts for all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from client_lib.core.certificates import binding

from ..clients import SCOPE_TOKEN_RE, Client
from ..dpop import DPoPBinding
from ..errors import InvalidRequest, InvalidScope, InvalidTarget
from ..messages import TokenRequest
from ..tokens import token_type

MAX_RESOURCES = 16


@dataclass(slots=True)
class Issued:
    """What a grant issued: the signed token and its claims, for whom, and how the client proved itself."""

    token: str
    claims: dict[str, Any]
    client_id: str
    auth_method: str
    # The audit event of the issue, and extra members of the token response (RFC 8693 issued_token_type).
    event: str = "token.issued"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def token_type(self) -> str:
        return token_type(self.claims)


class Grant(Protocol):
    """One grant type. `issue` records in `context` what the audit line should carry (client_id once the
    client is authenticated, scope, audience), also when it refuses."""

    grant_type: str

    def issue(self, request: TokenRequest, context: dict[str, Any]) -> Issued: ...


def confirmation(dpop: DPoPBinding, request: TokenRequest, client: Client) -> dict[str, str] | None:
    """The issued token's `cnf`: the DPoP proof's key (RFC 9449 §6, `jkt`) and the certificate the request came
    with (RFC 8705 §3.1, `x5t#S256`). A request with both gets a token bound to both: accepted only with both."""
    cnf = {**(dpop.confirmation(request, client) or {}), **(binding(request.auth.certificate) or {})}
    return cnf or None


def resolve_scopes(client: Client, requested: str | None) -> list[str]:
    """RFC 6749 §3.3: the requested scopes if all are allowed, or the client's defaults when absent."""
    scopes = requested_scopes(requested)
    if scopes is None:
        return list(client.granted_scopes())
    for token in scopes:
        if token not in client.scopes:
            raise InvalidScope(f"scope {token!r} is not allowed for this client")
    return scopes


def requested_scopes(requested: str | None) -> list[str] | None:
    """RFC 6749 §3.3: the scope tokens asked for, in order and without repeats; None when the request names none."""
    if requested is None or not requested.strip():
        return None
    scopes: list[str] = []
    for token in requested.split(" "):
        if not token:
            continue
        if not SCOPE_TOKEN_RE.match(token) or len(token) > 256:
            raise InvalidScope("scope is malformed")
        if token not in scopes:
            scopes.append(token)
    return scopes


def resolve_audiences(client: Client, audience: str | None, resources: tuple[str, ...]) -> list[str]:
    """RFC 8707 §2: each `resource` (absolute URI) or `audience` must be allowed; else the default."""
    requested = requested_targets(audience, resources)
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


def requested_targets(audience: str | None, resources: tuple[str, ...]) -> list[str]:
    """RFC 8707 §2 (RFC 8693 §2.1): the `audience` and each `resource`, an absolute URI without a fragment."""
    if len(resources) > MAX_RESOURCES:
        raise InvalidTarget("too many resource parameters")
    for resource in resources:
        parts = urlsplit(resource)
        if not parts.scheme or parts.fragment:
            raise InvalidTarget("resource must be an absolute URI without a fragment")
    return [a for a in [audience, *resources] if a is not None]
