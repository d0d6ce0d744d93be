"""Independent interop for token exchange (RFC 8693): panva's oauth4webapi (node) exchanges a token through its
generic token endpoint request against a live `tokendealer serve`, and validates the result as RFC 9068."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import run_cli

pytestmark = [pytest.mark.live, pytest.mark.slow]

B, C = "https://b.example", "https://c.example"
SCRIPT = Path(__file__).with_name("interop") / "exchange.mjs"


@pytest.fixture(scope="module")
def oauth4webapi(tmp_path_factory) -> Path:
    """A folder with `npm install oauth4webapi` done; fails loudly (never skips) when node or npm cannot."""
    folder = tmp_path_factory.mktemp("oauth4webapi")
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        pytest.fail("the oauth4webapi interop test needs node and npm on the PATH")
    (folder / "package.json").write_text('{"name": "td-interop", "private": true, "type": "module"}')
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "oauth4webapi@3"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"npm install oauth4webapi failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    shutil.copy(SCRIPT, folder / SCRIPT.name)
    return folder


def test_oauth4webapi_exchanges_and_validates_the_exchanged_token(live_factory, oauth4webapi):
    server = live_factory(workers=1)
    secrets = {}
    for name, options in {
        "svc-a": ["--scope", "invoices:read orders:read", "--audience", B],
        "svc-b": ["--scope", "b:own", "--audience", C, "--serves", B, "--exchange-audience", C],
    }.items():
        created = run_cli("client", "create", name, *options, env=server.env)
        assert created.returncode == 0, created.stderr
        secrets[name] = json.loads(created.stdout)["client_secret"]
    env = {**os.environ, "ISSUER": server.url, "B": B, "C": C, "A_SECRET": secrets["svc-a"], "B_SECRET": secrets["svc-b"]}
    result = subprocess.run(["node", SCRIPT.name], cwd=oauth4webapi, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in out["grant_types"]
    assert (out["token_type"], out["issued_token_type"]) == ("bearer", "urn:ietf:params:oauth:token-type:access_token")
    assert out["scope"] == "invoices:read"
    claims = out["claims"]
    assert (claims["sub"], claims["client_id"], claims["aud"], claims["iss"]) == ("svc-a", "svc-a", C, server.url)
    assert claims["act"] == {"sub": "svc-b"}
    assert out["refusal"] == {"error": "invalid_target", "status": 400}
