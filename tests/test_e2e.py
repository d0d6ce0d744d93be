"""End to end: `tokendealer serve` (granian) on a loopback port, real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys

import jwt
import pytest
import requests

from .conftest import run_cli, server_env

pytestmark = [pytest.mark.live]


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

    refused = run_cli("token", "--client-id", "svc", "--client-secret", "-", env=server.env, input="wrong\n")
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


# `serve` checks the schema and keyring, then granian forks its workers from that process: whatever it
# imported, each worker carries. Alembic (with Mako) cost every worker 14 MB RSS before the check read the
# version table with SQLAlchemy alone.
SERVE_IMPORTS = """
import json, sys
from tokendealer import serving
serving._granian = lambda *args: print(json.dumps(sorted(sys.modules)))
from tokendealer.cli import main
main(["serve", "--port", "1"])
"""


def test_serve_checks_do_not_load_what_workers_do_not_need(tmp_path):
    env = server_env(tmp_path)
    assert run_cli("init", env=env).returncode == 0
    result = subprocess.run([sys.executable, "-c", SERVE_IMPORTS], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert "tokendealer" in loaded
    assert loaded.isdisjoint({"alembic", "mako", "requests", "urllib3"})
