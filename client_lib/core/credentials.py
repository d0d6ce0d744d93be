"""How a client proves itself: a secret (HTTP Basic), a private key signing RFC 7523 assertions, or a
workload token from a file (federated client authentication)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..exceptions import FederatedTokenError, InvalidToken
from ..jose import ASSERTION_TYPE, default_algorithm, parse_jws


def load_private_key(private_key: Any) -> Any:
    """A private key object from a PEM path, PEM bytes/str, or a key object."""
    if isinstance(private_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        return private_key
    if isinstance(private_key, str) and "-----BEGIN" not in private_key:
        with open(private_key, "rb") as fh:
            private_key = fh.read()
    if isinstance(private_key, str):
        private_key = private_key.encode()
    return serialization.load_pem_private_key(private_key, password=None)


def client_assertion(client_id: str, audience: str, key: Any, alg: str, key_id: str | None, now: float, lifetime: int = 60) -> str:
    """An RFC 7523 client assertion: iss = sub = client_id, aud = the token endpoint, a fresh jti."""
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + lifetime,
        "jti": secrets.token_urlsafe(18),
    }
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def read_federated_token(path: str | os.PathLike[str], now: float) -> str:
    """The workload token in `path` (a Kubernetes projected token, a JWT-SVID, …), read afresh: the platform
    rewrites the file before the token expires. FederatedTokenError when it cannot be read, is not a compact
    JWS of an accepted algorithm, or has expired (the server would refuse it; this says why, and where)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FederatedTokenError(f"the federated token file {path} cannot be read ({exc.__class__.__name__})") from None
    if not token:
        raise FederatedTokenError(f"the federated token file {path} is empty")
    try:
        exp = parse_jws(token, noun="the federated token").unverified_claims().get("exp")
    except InvalidToken:
        raise FederatedTokenError(f"the federated token file {path} is not a JWT") from None
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp <= now:
        raise FederatedTokenError(f"the federated token in {path} has expired; is the platform still refreshing it?")
    return token


class Credentials:
    """How a client proves itself: a secret (HTTP Basic, RFC 6749 §2.3.1), a private key (RFC 7523 §2.2), a
    workload token of a trusted issuer read from a file (federated client authentication, RFC 7523 §2.2), or
    only its TLS client certificate (`tls`: RFC 8705 §2, the shell presents it; it also binds the tokens)."""

    def __init__(
        self,
        client_id: str,
        client_secret: str | None,
        private_key: Any,
        key_id: str | None,
        clock: Callable[[], float],
        federated_token_file: str | os.PathLike[str] | None = None,
        tls: bool = False,
    ):
        given = 3 - [client_secret, private_key, federated_token_file].count(None)
        if given > 1 or (given == 0 and not tls):
            raise ValueError("give exactly one of client_secret, private_key, federated_token_file (or only a cert)")
        self.client_id = client_id
        self._secret = client_secret
        self._key = load_private_key(private_key) if private_key is not None else None
        self._alg = default_algorithm(self._key) if self._key is not None else None
        self._token_file = federated_token_file
        self.key_id = key_id
        self.clock = clock

    def auth(self, audience: str) -> tuple[dict[str, str], tuple[str, str] | None]:
        """Form fields and the HTTP Basic pair for one request to `audience` (an endpoint URL)."""
        if self._token_file is not None:
            token = read_federated_token(self._token_file, self.clock())
            return {"client_id": self.client_id, "client_assertion_type": ASSERTION_TYPE, "client_assertion": token}, None
        if self._key is not None and self._alg is not None:
            assertion = client_assertion(self.client_id, audience, self._key, self._alg, self.key_id, self.clock())
            return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}, None
        if self._secret is None:
            # RFC 8705 §2: the certificate is the proof; client_id names the client.
            return {"client_id": self.client_id}, None
        return {}, (quote_plus(self.client_id), quote_plus(self._secret))
