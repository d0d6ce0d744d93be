"""`tokendealer issuers add|list|remove`, `client federate` and `client create --no-secret` (SPEC §4.1)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tokendealer.cli import main

from .conftest import FakeClock, free_port
from .workload_issuer import WorkloadIssuer


@pytest.fixture
def cli(tmp_path):
    env = {
        "TOKENDEALER_KEYS_DIR": str(tmp_path / "keys"),
        "TOKENDEALER_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'td.db'}",
        "TOKENDEALER_AUDIT_LOG": str(tmp_path / "audit.log"),
        "TOKENDEALER_ISSUER": "https://tokens.example.com",
    }
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    assert run("init").exit_code == 0
    return run


@pytest.fixture
def cluster():
    issuer = WorkloadIssuer(FakeClock())
    yield issuer
    issuer.close()


def test_issuers_add_through_discovery_list_and_remove(cli, cluster):
    result = cli("issuers", "add", cluster.url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["jwks_uri"] == cluster.url + "/keys"
    listed = json.loads(cli("issuers", "list", "--json").output)
    assert [i["issuer"] for i in listed] == [cluster.url]
    assert cli("client", "create", "billing", "--audience", "https://billing", "--no-secret").exit_code == 0
    assert cli("client", "federate", "billing", "--issuer", cluster.url, "--subject", "system:serviceaccount:prod:billing").exit_code == 0
    removed = json.loads(cli("issuers", "remove", cluster.url, "--json").output)
    assert removed["rules_removed"] == 1
    assert json.loads(cli("client", "federate", "billing", "--list", "--json").output) == []
    assert cli("issuers", "remove", cluster.url).exit_code == 1


def test_issuer_must_be_https_off_loopback(cli, tmp_path, cluster):
    result = cli("issuers", "add", "http://issuer.example.com")
    assert result.exit_code == 1 and "must use https" in result.output
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(cluster.jwks()))
    result = cli("issuers", "add", "http://issuer.example.com", "--jwks", str(jwks), "--allow-http", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["keys"] == "jwks"


def test_issuer_with_a_jwks_file_is_not_fetched(cli, tmp_path, cluster):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(cluster.jwks()))
    assert cli("issuers", "add", "https://kubernetes.default.svc.cluster.local", "--jwks", str(jwks)).exit_code == 0
    assert cluster.count("/keys") == 0


def test_issuer_discovery_must_name_the_issuer_exactly(cli, cluster):
    result = cli("issuers", "add", cluster.url + "/")
    assert result.exit_code == 1 and "not exactly the trusted issuer" in result.output
    # what the document names is shown, so the trailing `/` is seen; no --jwks hint, since the issuer answered
    assert f"names {cluster.url!r}, not exactly the trusted issuer {cluster.url + '/'!r}" in result.output
    assert "--jwks" not in result.output and len(result.output.strip().splitlines()) == 1


def test_unreachable_issuer_is_refused_with_a_hint(cli, cluster):
    cluster.down = True
    result = cli("issuers", "add", cluster.url)
    assert result.exit_code == 1 and "--jwks FILE" in result.output


def test_an_issuer_nothing_listens_on_is_refused_in_words(cli):
    result = cli("issuers", "add", f"http://127.0.0.1:{free_port()}")  # a port free a moment ago: connection refused
    assert result.exit_code == 1, result.output
    assert "failed: connection refused; give its keys instead" in result.output and "Error" not in result.output


def test_private_keys_in_a_jwks_file_are_refused(cli, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    result = cli("issuers", "add", "https://issuer.example.com", "--jwks", str(jwks))
    assert result.exit_code == 1 and "no usable public signature key" in result.output


def test_client_federate_rules(cli, cluster):
    assert cli("issuers", "add", cluster.url).exit_code == 0
    created = json.loads(cli("client", "create", "billing", "--audience", "https://billing", "--no-secret").output)
    assert "client_secret" not in created and created["auth_method"] == "federated"
    result = cli(
        "client",
        "federate",
        "billing",
        "--issuer",
        cluster.url,
        "--subject",
        "system:serviceaccount:prod:billing",
        "--condition",
        "kubernetes.io.namespace=prod",
        "--single-use",
    )
    assert result.exit_code == 0, result.output
    rule = json.loads(result.output)
    assert rule["audience"] == "https://tokens.example.com"  # default: this server's issuer URL
    assert rule["conditions"] == ["kubernetes.io.namespace=prod"] and rule["single_use"] is True
    listed = cli("client", "federate", "billing", "--list")
    assert rule["rule_id"] in listed.output and "single-use" in listed.output
    assert cli("client", "federate", "billing", "--remove", rule["rule_id"]).exit_code == 0
    assert cli("client", "federate", "billing", "--remove", rule["rule_id"]).exit_code == 1


def test_client_federate_refusals(cli, cluster):
    assert cli("client", "create", "billing", "--audience", "https://billing", "--no-secret").exit_code == 0
    result = cli("client", "federate", "billing", "--issuer", cluster.url, "--subject", "x")
    assert result.exit_code == 1 and "not a trusted issuer" in result.output
    assert cli("issuers", "add", cluster.url).exit_code == 0
    assert cli("client", "federate", "nobody", "--issuer", cluster.url, "--subject", "x").exit_code == 1
    assert cli("client", "federate", "billing", "--issuer", cluster.url, "--subject", "*").exit_code == 1
    assert cli("client", "federate", "billing", "--issuer", cluster.url, "--subject", "x", "--condition", "novalue").exit_code == 1
    assert cli("client", "federate", "billing", "--subject", "x").exit_code == 2
    assert cli("client", "federate", "billing", "--list", "--subject", "x").exit_code == 2


def test_a_loose_subject_prefix_warns(cli, cluster):
    assert cli("issuers", "add", cluster.url).exit_code == 0
    assert cli("client", "create", "ci", "--audience", "https://deploy", "--no-secret").exit_code == 0
    result = cli("client", "federate", "ci", "--issuer", cluster.url, "--subject", "repo:acme/app*")
    assert result.exit_code == 0 and "warning: the subject prefix" in result.output
    result = cli("client", "federate", "ci", "--issuer", cluster.url, "--subject", "repo:acme/app:*")
    assert result.exit_code == 0 and "warning" not in result.output


def test_a_secretless_client_has_no_secret_to_rotate(cli):
    assert cli("client", "create", "billing", "--audience", "https://billing", "--no-secret").exit_code == 0
    result = cli("client", "rotate-secret", "billing")
    assert result.exit_code == 1 and "has no secret" in result.output
