"""Client certificates of mutual TLS (RFC 8705): reading the one a TLS-terminating proxy passes on, and
the certificate-bound token check (§3). I/O-free; the server reads proxy headers with the same parser."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..exceptions import CertificateMismatch
from ..jose import b64url

# RFC 8705 §3.1: the confirmation member carrying the certificate's SHA-256 thumbprint.
THUMBPRINT = "x5t#S256"
# A leaf certificate is 1–2 KB of DER; URL-encoded PEM (nginx) grows it by about 1.5x. Larger is refused unread.
MAX_HEADER_LENGTH = 16384


class CertificateError(ValueError):
    """A presented certificate cannot be read; the message says why, never what it held."""


@dataclass(frozen=True)
class PresentedCertificate:
    """A client's X.509 certificate as presented in the TLS handshake (DER), with its RFC 8705 §3.1 thumbprint.

    The binding check needs only the thumbprint, so the certificate is parsed when first asked for: bytes that
    are no certificate cannot hash to a real certificate's thumbprint."""

    der: bytes

    @property
    def thumbprint(self) -> str:
        """`x5t#S256`: base64url of the SHA-256 of the DER encoding."""
        return b64url(hashlib.sha256(self.der).digest())

    @cached_property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate; CertificateError if the bytes are not one."""
        try:
            return x509.load_der_x509_certificate(self.der)
        except ValueError:
            raise CertificateError("the client certificate is not a DER X.509 certificate") from None


def from_header(value: str) -> PresentedCertificate:
    """The certificate in a proxy header: RFC 9440 `Client-Cert` (a structured-field byte sequence,
    `:base64-DER:`) or nginx's `$ssl_client_escaped_cert` (URL-encoded PEM)."""
    value = value.strip()
    if len(value) > MAX_HEADER_LENGTH:
        raise CertificateError(f"the client certificate header is longer than {MAX_HEADER_LENGTH} characters")
    if len(value) > 2 and value[0] == ":" and value[-1] == ":":
        try:
            der = base64.b64decode(value[1:-1], validate=True)
        except (binascii.Error, ValueError):
            raise CertificateError("the client certificate header is not valid base64 (RFC 9440)") from None
        return PresentedCertificate(der)
    # Anything outside ASCII becomes U+FFFD, which no PEM holds: refused below.
    return _from_pem(unquote(value, encoding="ascii", errors="replace"))


_PEM_BEGIN, _PEM_END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


def _from_pem(text: str) -> PresentedCertificate:
    """The first certificate of a PEM text, its base64 decoded directly (no PEM parser round trip)."""
    begin, end = text.find(_PEM_BEGIN), text.find(_PEM_END)
    if begin != 0 or end < 0:
        raise CertificateError("the client certificate is neither :base64-DER: (RFC 9440) nor URL-encoded PEM")
    try:
        der = base64.b64decode("".join(text[len(_PEM_BEGIN) : end].split()), validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError("the client certificate's PEM is not valid base64") from None
    return PresentedCertificate(der)


def load(value: Any) -> PresentedCertificate:
    """A certificate given as PEM or DER bytes, a PEM string, or a `cryptography` Certificate."""
    if isinstance(value, PresentedCertificate):
        return value
    if isinstance(value, x509.Certificate):
        return PresentedCertificate(value.public_bytes(Encoding.DER))
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes):
        raise CertificateError("the client certificate must be PEM or DER bytes or a cryptography Certificate")
    if value.lstrip().startswith(b"-----BEGIN"):
        return _from_pem(value.strip().decode("ascii", "replace"))
    return PresentedCertificate(value)


def from_request(header_value: str | None, tls_pem: str | None) -> PresentedCertificate | None:
    """The certificate a request came with: from the header a trusted proxy sets, when the service names one,
    else from its own server's TLS layer (PEM); CertificateMismatch when one is there but cannot be read."""
    try:
        if header_value is not None:
            return from_header(header_value)
        return load(tls_pem) if tls_pem else None
    except CertificateError as exc:
        raise CertificateMismatch(str(exc)) from None


def binding(certificate: PresentedCertificate | None) -> dict[str, str] | None:
    """RFC 8705 §3.1: the `cnf` claim binding a token to `certificate`, or None without one."""
    return {THUMBPRINT: certificate.thumbprint} if certificate is not None else None


def check_binding(claims: dict[str, Any], client_cert: Any) -> None:
    """RFC 8705 §3: a token whose `cnf` names a certificate thumbprint is accepted only with that certificate
    (compared in constant time); raise CertificateMismatch otherwise. Tokens not bound to one pass, and
    `client_cert` (None, or any form `load` takes) is read only for a bound token."""
    cnf = claims.get("cnf")
    if cnf is None:
        return
    if not isinstance(cnf, dict):
        raise CertificateMismatch("the token's cnf claim is not a JSON object")
    if THUMBPRINT not in cnf:
        return
    expected = cnf[THUMBPRINT]
    if not isinstance(expected, str):
        raise CertificateMismatch("the token's x5t#S256 is not a string")
    if client_cert is None:
        raise CertificateMismatch("the token is bound to a client certificate and none was presented")
    try:
        presented = load(client_cert)
    except CertificateError as exc:
        raise CertificateMismatch(f"the token is bound to a client certificate and {exc}") from None
    if not hmac.compare_digest(expected.encode("ascii", "replace"), presented.thumbprint.encode("ascii")):
        raise CertificateMismatch("the token is bound to another client certificate")
