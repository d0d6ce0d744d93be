"""Independent clients against a live server: Authlib (a well-known OAuth2/JOSE library, not ours)
fetches tokens with every auth method and validates metadata (RFC 8414) and tokens (RFC 9068) strictly."""

from __future__ import annotations

import json

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey, KeySet

from .conftest import run_cli

pytestmark = [pytest.mark.live]

AUDIENCE = "https://api.example.com"


@pytest.fixture
def server(live_factory, tmp_path):
    server = live_factory(workers=2)
    created = run_cli("client", "create", "svc", "--scope", "read write", "--audience", AUDIENCE, env=server.env)
    server.secret = json.loads(created.stdout)["client_secret"]
    key = ec.generate_private_key(ec.SECP256R1())
    server.pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    (tmp_path / "k.pem").write_text(server.pem)
    (tmp_path / "k.jwks").write_text(run_cli("client", "jwks", str(tmp_path / "k.pem"), env=server.env).stdout)
    assert (
        run_cli(
            "client", "create", "keysvc", "--scope", "read", "--audience", AUDIENCE, "--jwks", str(tmp_path / "k.jwks"), env=server.env
        ).returncode
        == 0
    )
    return server


class Validator(JWTBearerTokenValidator):
    def __init__(self, jwks, **kwargs):
        super().__init__(**kwargs)
        self.jwks = jwks

    def get_jwks(self):
        return self.jwks


def test_authlib_clients_and_rfc9068_validation(server):
    raw = requests.get(server.url + "/.well-known/oauth-authorization-server", timeout=5).json()
    metadata = AuthorizationServerMetadata(raw)
    metadata.validate()
    assert metadata["issuer"] == server.url
    jwks = KeySet.import_key_set(requests.get(metadata["jwks_uri"], timeout=5).json())
    validator = Validator(jwks, issuer=server.url, resource_server=AUDIENCE)

    tokens = []
    for method in ("client_secret_basic", "client_secret_post"):
        session = OAuth2Session("svc", server.secret, token_endpoint_auth_method=method, scope="read")
        tokens.append(session.fetch_token(metadata["token_endpoint"], grant_type="client_credentials", audience=AUDIENCE))
    key_session = OAuth2Session(
        "keysvc", ECKey.import_key(server.pem), token_endpoint_auth_method=PrivateKeyJWT(metadata["token_endpoint"], alg="ES256")
    )
    tokens.append(key_session.fetch_token(metadata["token_endpoint"], grant_type="client_credentials", resource=AUDIENCE))

    for token in tokens:
        assert token["token_type"] == "Bearer" and token["scope"] == "read"
        claims = validator.authenticate_token(token["access_token"])
        validator.validate_token(claims, scopes=["read"], request=None)

    introspected = requests.post(
        metadata["introspection_endpoint"], data={"token": tokens[0]["access_token"]}, auth=("svc", server.secret), timeout=5
    )
    assert introspected.json()["active"] is True
    assert requests.post(
        metadata["revocation_endpoint"], data={"token": tokens[0]["access_token"]}, auth=("svc", server.secret), timeout=5
    ).ok
    introspected = requests.post(
        metadata["introspection_endpoint"], data={"token": tokens[0]["access_token"]}, auth=("svc", server.secret), timeout=5
    )
    assert introspected.json() == {"active": False}
