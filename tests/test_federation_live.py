"""Federation between two running TokenDealers: one (`tokendealer serve`, started here) acts as the external
cluster issuer, its access tokens real JWTs behind real discovery; the other trusts it (SPEC §4.1)."""

from __future__ import annotations

import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib import FederatedTokenError, TokenClient, TokenVerifier
from client_lib.jose import public_jwk

from .conftest import FakeClock, LiveServer, free_port, run_cli, server_env
from .workload_issuer import WorkloadIssuer

pytestmark = pytest.mark.live

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def cli(env, *args):
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The cluster issuer (a TokenDealer whose client `billing-sa` stands for a workload) and the trusting
    server, whose secretless client `billing` trusts that workload's tokens. One pair for the module: the
    test that stops the cluster issuer comes last."""
    tmp_path = tmp_path_factory.mktemp("federation")
    cluster_port, port = free_port(), free_port()
    cluster_url, url = f"http://127.0.0.1:{cluster_port}", f"http://127.0.0.1:{port}"
    (tmp_path / "cluster").mkdir()
    (tmp_path / "server").mkdir()
    cluster_env = server_env(tmp_path / "cluster", TOKENDEALER_ISSUER=cluster_url)
    env = server_env(tmp_path / "server", TOKENDEALER_ISSUER=url)
    cli(cluster_env, "init")
    secret = json.loads(cli(cluster_env, "client", "create", "billing-sa", "--audience", url))["client_secret"]
    cluster = LiveServer(cluster_env, workers=1, port=cluster_port).start()
    servers = [cluster]
    try:
        cli(env, "init")
        cli(env, "issuers", "add", cluster_url)
        cli(env, "client", "create", "billing", "--scope", "invoices:read", "--audience", "https://billing", "--no-secret")
        cli(env, "client", "federate", "billing", "--issuer", cluster_url, "--subject", "billing-sa")
        server = LiveServer(env, workers=1, port=port).start()
        servers.append(server)

        def workload_token() -> str:
            out = cli({**cluster_env, "TOKENDEALER_CLIENT_SECRET": secret}, "token", "--client-id", "billing-sa", "--audience", url)
            return out.strip()

        yield {"cluster": cluster, "server": server, "env": env, "workload_token": workload_token, "tmp": tmp_path}
    finally:
        for s in servers:
            s.stop()


def test_the_token_command_with_a_workload_token_file_and_a_dpop_key(pair):
    """The CLI path of federation and DPoP: `tokendealer token --federated-token-file F --dpop-key K`."""
    token_file, key_file = pair["tmp"] / "projected-token", pair["tmp"] / "dpop.pem"
    token_file.write_text(pair["workload_token"]())
    key = ec.generate_private_key(ec.SECP256R1())
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    args = ("token", "--client-id", "billing", "--federated-token-file", str(token_file), "--audience", "https://billing", "--json")
    response = json.loads(cli(pair["env"], *args, "--dpop-key", str(key_file)))
    assert response["token_type"] == "DPoP"
    claims = jwt.decode(response["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "billing" and claims["cnf"] == {"jkt": public_jwk(key.public_key(), "ES256")["kid"]}
    token_file.write_text("not a token")
    refused = run_cli(*args, env=pair["env"])
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    both = run_cli(*args, "--client-secret", "x", env=pair["env"])
    assert both.returncode == 2 and "exactly one of" in both.stderr


def test_a_workload_of_the_cluster_issuer_gets_a_token_both_ways(pair):
    server, token = pair["server"], pair["workload_token"]()
    form = {"grant_type": "client_credentials", "client_id": "billing", "client_assertion_type": ASSERTION_TYPE, "client_assertion": token}
    response = requests.post(server.url + "/oauth/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "billing" and claims["aud"] == "https://billing"
    response = requests.post(server.url + "/oauth/token", data={"grant_type": JWT_BEARER, "assertion": token}, timeout=10)
    assert response.status_code == 200, response.text
    issued: list[dict] = []
    deadline = time.monotonic() + 5  # the audit log is written in batches, at least once a second
    while len(issued) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        audit = [json.loads(line) for line in (pair["tmp"] / "server" / "audit.log").read_text().splitlines()]
        issued = [e for e in audit if e["event"] == "token.issued"]
    assert [e["auth_method"] for e in issued][-2:] == ["federated", "federated"]
    assert {e["external_subject"] for e in issued} == {"billing-sa"}
    assert token not in (pair["tmp"] / "server" / "audit.log").read_text()


def test_a_never_fetched_issuer_that_is_down_is_a_clear_refusal(pair):
    server, env = pair["server"], pair["env"]
    issuer = WorkloadIssuer(FakeClock(start=time.time()))
    try:
        cli(env, "issuers", "add", issuer.url)
        cli(env, "client", "create", "spire-workload", "--audience", "https://billing", "--no-secret")
        cli(env, "client", "federate", "spire-workload", "--issuer", issuer.url, "--subject", "spiffe://trust.domain/ns/prod/sa/billing")
        issuer.down = True
        token = issuer.spiffe_token(server.url)
        form = {"grant_type": "client_credentials", "client_id": "spire-workload", "client_assertion_type": ASSERTION_TYPE}
        response = requests.post(server.url + "/oauth/token", data={**form, "client_assertion": token}, timeout=10)
        assert response.status_code == 401, response.text
        assert "keys could not be fetched" in response.json()["error_description"]
        response = requests.post(server.url + "/oauth/token", data={"grant_type": JWT_BEARER, "assertion": token}, timeout=10)
        assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    finally:
        issuer.close()


def test_client_lib_trades_the_projected_token_file(pair):
    server, path = pair["server"], pair["tmp"] / "projected-token"
    path.write_text(pair["workload_token"]() + "\n")
    client = TokenClient(server.url, "billing", federated_token_file=path)
    token = client.get_token(audience="https://billing", scope="invoices:read")
    verifier = TokenVerifier(issuer=server.url, audience="https://billing")
    assert verifier.verify(token, scopes=["invoices:read"])["client_id"] == "billing"
    path.write_text("garbage")  # the kubelet is rewriting it: a clear error, not a request with garbage
    with pytest.raises(FederatedTokenError):
        client.fetch_token_response(audience="https://billing")


def test_cached_keys_keep_working_while_the_cluster_issuer_is_down(pair):
    server, token = pair["server"], pair["workload_token"]()
    assert requests.post(server.url + "/oauth/token", data={"grant_type": JWT_BEARER, "assertion": token}, timeout=10).status_code == 200
    pair["cluster"].stop()
    for _ in range(3):
        response = requests.post(server.url + "/oauth/token", data={"grant_type": JWT_BEARER, "assertion": token}, timeout=10)
        assert response.status_code == 200, response.text
