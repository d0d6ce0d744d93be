"""OAuth request messages, parsed once at the HTTP edge into typed values: the endpoints and the client
authenticator never look at raw form parameters.

Messages are built once per request and nothing changes them afterwards. They are slotted, not frozen:
a frozen dataclass's `__init__` sets each field through `object.__setattr__`, about 1 µs more per message
on the token path (py-spy showed these `__init__`s at ~3% of a worker's samples).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from client_lib.core.certificates import CertificateError, PresentedCertificate, from_header

from .errors import InvalidRequest

Params = Mapping[str, list[str]]
# A request header by name (case-insensitive), or None: the one view of headers both HTTP paths give.
Header = Callable[[str], "str | None"]
# RFC 9440: the header every layer after mtls.ProxyHeaders reads the client certificate from, whatever the
# proxy in front calls it.
CERT_HEADER = "Client-Cert"
# RFC 8707 §2: `resource` may be repeated; no other parameter may (RFC 6749 §3.1).
REPEATABLE = frozenset({"resource"})


def _singles(params: Params) -> dict[str, str]:
    """Each parameter's value; InvalidRequest for a repeated one but `resource` (whose first value is kept here)."""
    single = {}
    for name, values in params.items():
        if len(values) > 1 and name not in REPEATABLE:
            raise InvalidRequest(f"parameter {name} is repeated")
        if values:
            single[name] = values[0]
    return single


@dataclass(slots=True)
class ClientAuth:
    """What a request carries to authenticate its client (RFC 6749 §2.3, RFC 7523 §2.2); nothing checked yet."""

    authorization: str | None
    client_id: str | None = None
    client_secret: str | None = None
    assertion: str | None = None
    assertion_type: str | None = None
    address: str | None = None
    # RFC 8705: the TLS client certificate a trusted proxy passed on (mtls.ProxyHeaders drops anyone else's).
    certificate: PresentedCertificate | None = None

    @classmethod
    def parse(cls, params: Params, header: Header, address: str | None) -> ClientAuth:
        """Refuse repeated parameters; keep the rest as given."""
        return cls.of(_singles(params), header, address)

    @classmethod
    def of(cls, single: Mapping[str, str], header: Header, address: str | None) -> ClientAuth:
        """From each parameter's one value (`_singles`)."""
        return cls(
            authorization=header("Authorization"),
            client_id=single.get("client_id"),
            client_secret=single.get("client_secret"),
            assertion=single.get("client_assertion"),
            assertion_type=single.get("client_assertion_type"),
            address=address,
            certificate=_certificate(header(CERT_HEADER)),
        )


def _certificate(value: str | None) -> PresentedCertificate | None:
    if value is None:
        return None
    try:
        presented = from_header(value)
        presented.certificate  # noqa: B018 (parsed now, so a malformed one is this request's error)
        return presented
    except CertificateError as exc:
        raise InvalidRequest(str(exc)) from None


@dataclass(slots=True)
class TokenRequest:
    """A token request (RFC 6749 §4.4.2, RFC 8707 §2): the grant, what it asks for, and its client's proof."""

    grant_type: str
    scope: str | None
    audience: str | None
    resources: tuple[str, ...]
    auth: ClientAuth
    # RFC 7523 §2.1: the JWT bearer grant's assertion.
    assertion: str | None = None
    # RFC 8693 §2.1: token exchange.
    subject_token: str | None = None
    subject_token_type: str | None = None
    actor_token: str | None = None
    actor_token_type: str | None = None
    requested_token_type: str | None = None
    # RFC 9449 §4.1: the DPoP header as received (a server joins repeated headers with commas).
    dpop: str | None = None

    @classmethod
    def parse(cls, params: Params, header: Header, address: str | None) -> TokenRequest:
        """Refuse repeated parameters and a missing grant_type; keep the rest as given."""
        single = _singles(params)
        grant_type = single.get("grant_type")
        if not grant_type:
            raise InvalidRequest("grant_type is required")
        return cls(
            grant_type=grant_type,
            scope=single.get("scope"),
            audience=single.get("audience"),
            resources=tuple(params.get("resource", ())),
            auth=ClientAuth.of(single, header, address),
            assertion=single.get("assertion"),
            subject_token=single.get("subject_token"),
            subject_token_type=single.get("subject_token_type"),
            actor_token=single.get("actor_token"),
            actor_token_type=single.get("actor_token_type"),
            requested_token_type=single.get("requested_token_type"),
            dpop=header("DPoP"),
        )


@dataclass(slots=True)
class TokenQuery:
    """An introspection (RFC 7662 §2.1) or revocation (RFC 7009 §2.1) request: a token and the caller's proof."""

    token: str | None
    auth: ClientAuth

    @classmethod
    def parse(cls, params: Params, header: Header, address: str | None) -> TokenQuery:
        single = _singles(params)
        return cls(token=single.get("token") or None, auth=ClientAuth.of(single, header, address))

    def required_token(self) -> str:
        """The token asked about; checked after the caller is authenticated, so strangers learn nothing."""
        if not self.token:
            raise InvalidRequest("token is required")
        return self.token
