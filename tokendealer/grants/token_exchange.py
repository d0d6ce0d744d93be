"""RFC 8693: the token-exchange grant, for a service calling another on behalf of its own caller."""

from __future__ import annotations

from typing import Any

from client_lib.jose import actors

from ..authentication import ClientAuthenticator
from ..clients import Client, ClientStore
from ..dpop import DPoPBinding
from ..errors import InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget, UnauthorizedClient
from ..messages import TokenRequest
from ..tokens import TokenRejected, TokenService
from . import Issued, confirmation, requested_scopes, requested_targets

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# RFC 8693 §3: this server's access tokens are JWTs, so either identifier names them.
SUBJECT_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:jwt"})


class TokenExchangeGrant:
    """RFC 8693 §2: an authenticated client trades an access token meant for it (the subject token) for one
    meant for a service it calls, narrowed in scope, expiring no later, with itself added to the `act` chain.

    Policy is data on the client: its `serves` identities (the subject token's `aud` must name one) and its
    `exchange_audiences` (the only audiences it may ask for, its own token included: exchange never widens a
    client's own reach beyond what that list grants). Errors are those of §2.2.2; a subject token that is not
    valid, or not meant for this client, is `invalid_grant` (RFC 6749 §5.2).
    """

    grant_type = GRANT_TYPE

    def __init__(self, authenticator: ClientAuthenticator, clients: ClientStore, tokens: TokenService, max_depth: int, dpop: DPoPBinding):
        self.authenticator = authenticator
        self.clients = clients
        self.tokens = tokens
        self.max_depth = max_depth
        self.dpop = dpop

    def issue(self, request: TokenRequest, context: dict[str, Any]) -> Issued:
        client, creds = self.authenticator.authenticate(request.auth)
        context.update(client_id=client.client_id, **creds.audit_fields())
        _check_token_types(request)
        if not client.serves or not client.exchange_audiences:
            raise UnauthorizedClient("this client has no token-exchange policy (--serves and --exchange-audience)")
        subject = self._subject(request.subject_token, client)
        previous = actors(subject)
        context.update(subject=subject["sub"], actors=[client.client_id, *previous], subject_jti=subject["jti"])
        if request.actor_token is not None:
            self._check_actor(request.actor_token, client)
        if len(previous) + 1 > self.max_depth:
            raise InvalidRequest(f"the delegation chain would exceed {self.max_depth} actors")
        audiences = _audiences(client, request.audience, request.resources)
        subject_client = self.clients.get(subject["client_id"])
        if subject_client is None:  # validated a moment ago; deleted since
            raise InvalidGrant("subject_token's client is unknown or disabled")
        scopes = _scopes(subject, subject_client, request.scope)
        context.update(scope=" ".join(scopes), audience=audiences)
        # RFC 9449 §5 and RFC 8705 §3 with RFC 8693: the new token is the actor's, so it is bound to the actor's
        # own proof and certificate.
        cnf = confirmation(self.dpop, request, client)
        token, claims = self.tokens.exchange(subject, subject_client, client.client_id, audiences, scopes, cnf)
        return Issued(
            token, claims, client.client_id, creds.method, event="token.exchanged", extra={"issued_token_type": ACCESS_TOKEN_TYPE}
        )

    def _subject(self, subject_token: str | None, client: Client) -> dict[str, Any]:
        """§2.1: an access token of this server, valid now (as introspection judges it) and meant for `client`."""
        try:
            subject = self.tokens.validate(subject_token or "")
        except TokenRejected as exc:
            raise InvalidGrant(f"subject_token is not valid: {exc}") from None
        aud = subject["aud"] if isinstance(subject["aud"], list) else [subject["aud"]]
        if not set(aud) & set(client.serves):
            raise InvalidGrant("subject_token was not issued for this client (its aud names none of the client's --serves)")
        return subject

    def _check_actor(self, actor_token: str, client: Client) -> None:
        """§2.1: the actor token, when given, must be a valid token of this server identifying the requesting client."""
        try:
            actor = self.tokens.validate(actor_token)
        except TokenRejected as exc:
            raise InvalidRequest(f"actor_token is not valid: {exc}") from None
        if actor["sub"] != client.client_id or actor["client_id"] != client.client_id or "act" in actor:
            raise InvalidRequest("actor_token does not identify the requesting client")


def _check_token_types(request: TokenRequest) -> None:
    """§2.1: subject_token and its type are required, actor_token_type goes with actor_token, and only access
    tokens are issued."""
    if not request.subject_token:
        raise InvalidRequest("subject_token is required")
    if request.subject_token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest(f"subject_token_type must be {ACCESS_TOKEN_TYPE} or urn:ietf:params:oauth:token-type:jwt")
    if (request.actor_token is None) != (request.actor_token_type is None):
        raise InvalidRequest("actor_token and actor_token_type go together")
    if request.actor_token_type is not None and request.actor_token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest(f"actor_token_type must be {ACCESS_TOKEN_TYPE} or urn:ietf:params:oauth:token-type:jwt")
    if request.requested_token_type not in (None, ACCESS_TOKEN_TYPE):
        raise InvalidRequest(f"requested_token_type must be {ACCESS_TOKEN_TYPE}")


def _audiences(client: Client, audience: str | None, resources: tuple[str, ...]) -> list[str]:
    """§2.1: each `audience`/`resource` within the client's exchange audiences; absent, its only one."""
    requested = requested_targets(audience, resources)
    if not requested:
        if len(client.exchange_audiences) != 1:
            raise InvalidRequest("audience or resource is required: this client may exchange for several audiences")
        return [client.exchange_audiences[0]]
    for value in requested:
        if value not in client.exchange_audiences:
            raise InvalidTarget("requested audience is not among this client's exchange audiences")
    return list(dict.fromkeys(requested))


def _scopes(subject: dict[str, Any], subject_client: Client, requested: str | None) -> list[str]:
    """§2.1: within the subject token's scopes, as far as its client still holds them; absent, all of those."""
    held = [s for s in str(subject.get("scope", "")).split() if s in subject_client.scopes]
    scopes = requested_scopes(requested)
    if scopes is None:
        return held
    for token in scopes:
        if token not in held:
            raise InvalidScope(f"scope {token!r} is not within the subject token's scopes")
    return scopes
