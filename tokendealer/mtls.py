"""Mutual-TLS client authentication and certificate-bound tokens (RFC 8705), behind a TLS-terminating proxy.

The proxy verifies the TLS handshake and passes the client's certificate in a header (RFC 9440
`Client-Cert`, or nginx's URL-encoded PEM). `ProxyHeaders` is the one place that decides whether a request's
peer may set such headers; everything after it reads the certificate as `Client-Cert` through the request's
header getter, so the Flask views and the token fast path see the same thing.
"""

from __future__ import annotations

import functools
import ipaddress
import time
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from werkzeug.http import parse_list_header
from werkzeug.middleware.proxy_fix import ProxyFix

from client_lib.core.certificates import PresentedCertificate
from client_lib.jose import JwkError, VerificationKey

from .clients import Client
from .errors import InvalidClient
from .http import cgi_name
from .messages import CERT_HEADER

_CERT_ENVIRON = cgi_name(CERT_HEADER)
_CERT_NAME = CERT_HEADER.lower()
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# RFC 4514 §3 keywords, plus the e-mail attribute OpenSSL prints as emailAddress (and some tools as E).
_DN_KEYWORDS = {"emailAddress": NameOID.EMAIL_ADDRESS, "E": NameOID.EMAIL_ADDRESS}


class ProxyHeaders:
    """WSGI middleware: which proxy headers a request's peer may set.

    TOKENDEALER_TRUSTED_PROXIES as a count trusts that many X-Forwarded-For hops from any peer (as before);
    as addresses, one hop only from those peers. The certificate header (TOKENDEALER_CLIENT_CERT_HEADER) is
    kept only from a listed address: from anyone else it is dropped, as is any `Client-Cert` it did not set."""

    def __init__(self, app: Callable[..., Any], hops: int, networks: tuple[Network, ...], cert_header: str | None):
        self.app = app
        self.hops = hops
        self.networks = networks
        self.cert_key = cgi_name(cert_header) if cert_header else None
        self.cert_name = cert_header.lower() if cert_header else None
        self.forwarded = ProxyFix(app, x_for=hops or 1, x_proto=hops or 1)

    def trusts(self, address: str | None) -> bool:
        """Whether `address` is one of the listed proxies."""
        if not self.networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        ip = getattr(ip, "ipv4_mapped", None) or ip  # a dual-stack socket's ::ffff:10.0.0.5 is 10.0.0.5
        return any(ip in network for network in self.networks)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        presented = environ.pop(self.cert_key, None) if self.cert_key else None
        environ.pop(_CERT_ENVIRON, None)
        trusted = self.trusts(environ.get("REMOTE_ADDR"))
        if trusted and presented is not None:
            environ[_CERT_ENVIRON] = presented
        if self.hops or trusted:
            return self.forwarded(environ, start_response)
        return self.app(environ, start_response)

    def resolve(self, peer: str, headers: dict[str, str]) -> str:
        """The same rules on the edge's headers by lower-case name (`edge.Edge.headers`), changed in place; the
        client's address: X-Forwarded-For's hop as ProxyFix takes it, when the peer may set it, else the peer."""
        presented = headers.pop(self.cert_name, None) if self.cert_name else None
        headers.pop(_CERT_NAME, None)
        trusted = self.trusts(peer)
        if trusted and presented is not None:
            headers[_CERT_NAME] = presented
        if not (self.hops or trusted):
            return peer
        hops = self.hops or 1
        forwarded = parse_list_header(headers.get("x-forwarded-for") or "")
        # An empty hop (`""`) is no address: ProxyFix keeps the peer, and so must this (an empty address would
        # escape the per-address failure limit).
        return (forwarded[-hops] if len(forwarded) >= hops else "") or peer


def load_trust_anchors(path: str) -> tuple[x509.Certificate, ...]:
    """The CA certificates (PEM) that must have issued a tls_client_auth client's certificate; ValueError why not."""
    try:
        anchors = tuple(x509.load_pem_x509_certificates(Path(path).read_bytes()))
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror})") from None
    except ValueError:
        raise ValueError("holds no PEM certificate") from None
    return anchors


def parse_dn(text: str) -> x509.Name:
    """A subject DN as RFC 4514 writes it (most specific first: `CN=svc,O=Example`); ValueError if malformed."""
    try:
        return x509.Name.from_rfc4514_string(text, _DN_KEYWORDS)
    except ValueError:
        raise ValueError("is not an RFC 4514 distinguished name (such as CN=billing,O=Example)") from None


def _fold(value: Any) -> str:
    """The comparison form of an attribute value: NFKC, case-folded, inner whitespace collapsed (the spirit of
    RFC 4518's caseIgnoreMatch; X.500 matching rules per attribute are not modelled)."""
    text = value if isinstance(value, str) else bytes(value).hex()
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _normalised(name: x509.Name) -> tuple[frozenset[tuple[str, str]], ...]:
    """A DN as a sequence of RDNs, each a set of (attribute OID, folded value): order of RDNs matters,
    order within a multi-valued RDN does not."""
    return tuple(frozenset((attr.oid.dotted_string, _fold(attr.value)) for attr in rdn) for rdn in name.rdns)


@functools.lru_cache(maxsize=4096)
def _registered(dn: str) -> tuple[frozenset[tuple[str, str]], ...] | None:
    """A registered DN in comparison form, parsed once per process (None if it is malformed)."""
    try:
        return _normalised(parse_dn(dn))
    except ValueError:
        return None


def subject_matches(certificate: x509.Certificate, dn: str) -> bool:
    """RFC 8705 §2.1.2 tls_client_auth_subject_dn: the certificate's subject is the registered DN."""
    registered = _registered(dn)
    try:
        return registered is not None and _normalised(certificate.subject) == registered
    except ValueError:
        return False


def san_matches(certificate: x509.Certificate, expected: str) -> bool:
    """RFC 8705 §2.1.2: a URI subjectAltName equal to `expected` (exactly), or for a registered name without a
    scheme, a DNS subjectAltName equal to it (case-insensitive, no wildcard expansion)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    if urlsplit(expected).scheme:
        return expected in names.get_values_for_type(x509.UniformResourceIdentifier)
    wanted = expected.lower().rstrip(".")
    return any(name.lower().rstrip(".") == wanted for name in names.get_values_for_type(x509.DNSName))


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def key_registered(certificate: x509.Certificate, jwks: dict[str, Any] | None) -> bool:
    """RFC 8705 §2.2: the certificate's public key is one of the client's registered JWKS keys."""
    if not jwks:
        return False
    try:
        presented = _spki(certificate.public_key())
    except (ValueError, UnsupportedAlgorithm):
        return False
    for jwk in jwks.get("keys", ()):
        try:
            if _spki(VerificationKey.from_jwk(jwk).key) == presented:
                return True
        except (JwkError, AttributeError):
            continue
    return False


class CertificateAuthenticator:
    """RFC 8705 §2: which TLS method a client's certificate authenticates it by, or InvalidClient.

    A client registered with a subject DN and/or a subjectAltName uses tls_client_auth (all registered values
    must match); with `anchors` (TOKENDEALER_CLIENT_CA_FILE) its certificate must also be issued by one of
    them and valid now, so a proxy accepting any certificate (nginx `optional_no_ca`) cannot be fooled by a
    self-made one with the right name. A client with registered keys uses self_signed_tls_client_auth."""

    def __init__(
        self,
        registered_keys: Callable[[Client], dict[str, Any] | None],
        anchors: Iterable[x509.Certificate] = (),
        clock: Callable[[], float] = time.time,
    ):
        self.registered_keys = registered_keys
        self.anchors = tuple(anchors)
        self.clock = clock

    def authenticate(self, client: Client, presented: PresentedCertificate) -> str:
        """The method the certificate authenticates `client` by; InvalidClient if it does not."""
        certificate = presented.certificate
        if client.tls_subject or client.tls_san:
            if client.tls_subject and not subject_matches(certificate, client.tls_subject):
                raise InvalidClient("the client certificate's subject is not the one registered for this client")
            if client.tls_san and not san_matches(certificate, client.tls_san):
                raise InvalidClient("the client certificate has not the subjectAltName registered for this client")
            if self.anchors and not self._issued_by_anchor(certificate):
                raise InvalidClient("the client certificate is not issued by a trusted CA, or not valid now")
            return "tls_client_auth"
        if key_registered(certificate, self.registered_keys(client)):
            return "self_signed_tls_client_auth"
        raise InvalidClient("the client certificate's key is not registered for this client")

    def _issued_by_anchor(self, certificate: x509.Certificate) -> bool:
        now = self.clock()
        if not certificate.not_valid_before_utc.timestamp() <= now <= certificate.not_valid_after_utc.timestamp():
            return False
        for anchor in self.anchors:
            if anchor.subject != certificate.issuer:
                continue
            try:
                certificate.verify_directly_issued_by(anchor)
                return True
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
        return False
