"""Test certificates for mutual TLS (RFC 8705): a CA, client certificates it issues, self-signed ones, and the
header encodings a TLS-terminating proxy uses for them."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_lib.jose import public_jwk

_START = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_END = datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)


def name(**attributes: str) -> x509.Name:
    """A DN from keyword arguments in X.509 order (most general first): name(O="Example", CN="svc")."""
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes.items()])


@dataclass
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: Any

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def rfc9440(self) -> str:
        """RFC 9440 Client-Cert: a structured-field byte sequence of the DER."""
        return ":" + base64.b64encode(self.der).decode() + ":"

    def nginx_escaped(self) -> str:
        """nginx's $ssl_client_escaped_cert: the PEM, URL-encoded."""
        return quote(self.pem.decode(), safe="")

    def jwks(self) -> dict[str, Any]:
        """A JWK Set holding this certificate's public key (self_signed_tls_client_auth registration)."""
        return {"keys": [public_jwk(self.key.public_key(), "ES256")]}

    def write(self, folder: Path, stem: str) -> tuple[str, str]:
        """(certificate file, key file) in `folder`."""
        cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert.write_bytes(self.pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return str(cert), str(key)


def _build(
    subject: x509.Name, issuer: x509.Name, public_key: Any, signer: Any, ca: bool, sans: list[x509.GeneralName], server: bool
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_START)
        .not_valid_after(_END)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_ca(common_name: str = "Test CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = name(O="TokenDealer tests", CN=common_name)
    return Issued(_build(subject, subject, key.public_key(), key, True, [], False), key)


def issue(
    ca: Issued, subject: x509.Name, uris: tuple[str, ...] = (), dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), server: bool = False
) -> Issued:
    """A certificate for `subject` signed by `ca` (a client certificate unless `server`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    return Issued(_build(subject, ca.certificate.subject, key.public_key(), ca.key, False, sans, server), key)


def self_signed(common_name: str = "self-signed client") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = name(CN=common_name)
    return Issued(_build(subject, subject, key.public_key(), key, False, [], False), key)
