"""Access tokens at a protected service, framework-free: reading the Authorization and DPoP headers (RFC 6750
§2.1, RFC 9449 §7.1), and answering a refusal with the challenge of the scheme in use (RFC 6750 §3, RFC 9449 §7.1)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .core.dpop import single_proof
from .exceptions import BoundTokenAsBearer, InvalidDPoPProof, InvalidToken, KeySetUnavailable, MissingToken, UseDPoPNonce
from .jose import DPOP_ALGORITHMS

SCHEMES = {"bearer": "Bearer", "dpop": "DPoP"}


@dataclass(frozen=True)
class Presented:
    """What a request presents: the scheme (`Bearer` or `DPoP`), the token, and its one DPoP proof or None."""

    scheme: str
    token: str
    dpop_proof: str | None

    @classmethod
    def read(cls, authorization: str | None, dpop_headers: list[str]) -> Presented:
        """The token of an `Authorization: Bearer|DPoP` header and the request's DPoP header; MissingToken when
        there is no token in either scheme, InvalidDPoPProof for several DPoP headers (RFC 9449 §4.3 item 1)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() not in SCHEMES or not token:
            raise MissingToken("a bearer or DPoP token is required")
        return cls(SCHEMES[scheme.lower()], token, single_proof(dpop_headers))


def challenge(exc: InvalidToken, scopes: Iterable[str] | None, scheme: str = "Bearer") -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, headers and JSON body answering a refused token (RFC 6750 §3); a request that used DPoP, or
    failed on DPoP, gets a `DPoP` challenge naming the accepted algorithms, and `DPoP-Nonce` with
    use_dpop_nonce (RFC 9449 §7.1, §9). The description is the exception class's fixed text, so nothing from
    the token reaches the response."""
    if isinstance(exc, KeySetUnavailable):
        return 503, {"Retry-After": "5"}, {"error": "temporarily_unavailable", "error_description": exc.description}
    body = {"error": exc.error, "error_description": exc.description}
    if isinstance(exc, MissingToken):
        # RFC 6750 §3.1 and RFC 9449 §7.1: no error code, a challenge for each accepted scheme.
        return exc.status, {"WWW-Authenticate": f'Bearer, DPoP algs="{" ".join(DPOP_ALGORITHMS)}"'}, body
    dpop = scheme == "DPoP" or isinstance(exc, (InvalidDPoPProof, BoundTokenAsBearer))
    header = f'{"DPoP" if dpop else "Bearer"} error="{exc.error}", error_description="{exc.description}"'
    if exc.error == "insufficient_scope" and scopes:
        header += f', scope="{" ".join(scopes)}"'
    if dpop:
        header += f', algs="{" ".join(DPOP_ALGORITHMS)}"'
    headers = {"WWW-Authenticate": header}
    if isinstance(exc, UseDPoPNonce):
        headers["DPoP-Nonce"] = exc.nonce
    return exc.status, headers, body
