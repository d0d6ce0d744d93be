"""Independent interop for DPoP (RFC 9449): panva's oauth4webapi (node) gets a DPoP-bound token from a live
`tokendealer serve` that requires nonces, and calls a Flask service protected by client_lib's `require_token`;
the same token stolen (as Bearer, without a proof, with a proof for another URL or method) is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from flask import Flask, g, jsonify
from werkzeug.serving import make_server

from client_lib import TokenVerifier, require_token

from .conftest import run_cli
from .test_interop_exchange import oauth4webapi

pytestmark = [pytest.mark.live, pytest.mark.slow]

__all__ = ["oauth4webapi"]  # the fixture that installs it
AUDIENCE = "https://billing.example"
SCRIPT = Path(__file__).with_name("interop") / "dpop.mjs"


def test_oauth4webapi_gets_a_dpop_token_and_calls_a_require_token_service(live_factory, oauth4webapi):
    server = live_factory(workers=2, TOKENDEALER_DPOP_NONCE="on")
    created = run_cli("client", "create", "interop", "--scope", "invoices:read", "--audience", AUDIENCE, env=server.env)
    assert created.returncode == 0, created.stderr
    app = Flask("service")

    @app.route("/invoices", methods=["GET", "POST"])
    @require_token(TokenVerifier(server.url, AUDIENCE), scopes=["invoices:read"])
    def invoices():
        return jsonify(g.token_claims)

    service = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=service.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    shutil.copy(SCRIPT, oauth4webapi / SCRIPT.name)
    env = {
        **os.environ,
        "ISSUER": server.url,
        "SERVICE": f"http://127.0.0.1:{service.server_port}",
        "AUDIENCE": AUDIENCE,
        "SECRET": json.loads(created.stdout)["client_secret"],
    }
    try:
        result = subprocess.run(["node", SCRIPT.name], cwd=oauth4webapi, env=env, capture_output=True, text=True, timeout=60)
    finally:
        service.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["token_type"] == "dpop" and out["nonce_retried"] is True
    assert "ES256" in out["dpop_algs"]
    assert out["resource"] == {"status": 200, "cnf": {"jkt": out["jkt"]}, "sub": "interop"}
    for name, expected in {
        "asBearer": "invalid_token",
        "withoutProof": "invalid_dpop_proof",
        "proofForOtherUrl": "invalid_dpop_proof",
        "proofForOtherMethod": "invalid_dpop_proof",
    }.items():
        attempt = out["stolen"][name]
        assert attempt["status"] == 401, (name, attempt)
        assert attempt["challenge"].startswith(f'DPoP error="{expected}"'), (name, attempt)
