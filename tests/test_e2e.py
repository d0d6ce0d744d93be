"""End to end: `tokendealer serve` (gunicorn) on a loopback port, real HTTP."""

from __future__ import annotations

import json

import jwt
import requests

from .conftest import run_cli, server_env


def test_serve_fetch_and_verify_over_http(live_factory):
    server = live_factory(workers=2)
    created = run_cli("client", "create", "svc", "--scope", "read", "--audience", "https://api.example.com", env=server.env)
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["client_secret"]

    response = requests.post(server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("svc", secret), timeout=5)
    assert response.status_code == 200
    token = response.json()["access_token"]

    metadata = requests.get(server.url + "/.well-known/oauth-authorization-server", timeout=5).json()
    assert metadata["issuer"] == server.url
    signing_key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, signing_key.key, algorithms=["ES256"], audience="https://api.example.com", issuer=server.url)
    assert claims["client_id"] == "svc"

    fetched = run_cli(
        "token", "--client-id", "svc", "--audience", "https://api.example.com", env={**server.env, "TOKENDEALER_CLIENT_SECRET": secret}
    )
    assert fetched.returncode == 0, fetched.stderr
    verified = run_cli("verify", fetched.stdout.strip(), "--audience", "https://api.example.com", env=server.env)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["sub"] == "svc"

    refused = run_cli("token", "--client-id", "svc", "--client-secret", "wrong", env=server.env)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: invalid_client: client authentication failed"
    assert "wrong" not in server.log()


def test_serve_refuses_to_start_without_keyring(tmp_path):
    assert run_cli("db", "upgrade", env=server_env(tmp_path)).returncode == 0
    result = run_cli("serve", "--port", "1", env=server_env(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: no keyring")


def test_serve_refuses_to_start_without_database_schema(tmp_path):
    env = server_env(tmp_path)
    assert run_cli("keys", "init", env=env).returncode == 0
    result = run_cli("serve", "--port", "1", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: the database has no TokenDealer schema; run `tokendealer init` (or `tokendealer db upgrade`)"
