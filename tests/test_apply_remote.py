"""`tokendealer apply FILE --server URL` (issue #19), live: the same file applied to a real `tokendealer serve`
through its admin API, authenticated with client_lib as an admin client, from a machine with no database."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import requests

from client_lib import TokenAuth, TokenClient
from tokendealer import manifest, reconcile
from tokendealer.registries import RemoteRegistry

from .conftest import ISSUED_SECRETS, FakeClock, free_port, run_cli
from .workload_issuer import WorkloadIssuer

GITHUB = "https://token.actions.githubusercontent.com"


def apply_file(tmp_path, jwks: dict, ttl: int = 600, with_deployer: bool = True) -> str:
    document = {
        "issuers": [{"issuer": GITHUB, "jwks": jwks}],
        "clients": [{"client_id": "billing", "scopes": ["invoices:read"], "audiences": ["https://billing"], "token_ttl": ttl}],
    }
    if with_deployer:
        document["clients"].append(
            {
                "client_id": "deployer",
                "auth_method": "federated",
                "audiences": ["https://deploy.example.com"],
                "federation": [{"issuer": GITHUB, "subject": "repo:acme/app:ref:refs/heads/main", "conditions": ["repository_owner=acme"]}],
            }
        )
    path = tmp_path / "clients.yaml"
    path.write_text(json.dumps(document))
    return str(path)


def operator_env(tmp_path, client_id: str, secret: str) -> dict[str, str]:
    """An operator's machine: no TokenDealer database or keys of its own (they point at nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(
        TOKENDEALER_CLIENT_ID=client_id,
        TOKENDEALER_CLIENT_SECRET=secret,
        TOKENDEALER_DATABASE_URL=f"sqlite:///{tmp_path / 'nowhere' / 'none.db'}",
        TOKENDEALER_KEYS_DIR=str(tmp_path / "nowhere" / "keys"),
    )
    return env


def admin_client(server, client_id: str, scope: str) -> str:
    made = run_cli("client", "create", client_id, "--scope", scope, "--audience", server.url + "/admin", env=server.env)
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)["client_secret"]


def test_apply_round_trip_through_the_admin_api(live_factory, tmp_path):
    server = live_factory(workers=2)
    cluster = WorkloadIssuer(FakeClock())
    try:
        jwks = cluster.jwks()
    finally:
        cluster.close()
    env = operator_env(tmp_path, "ops", admin_client(server, "ops", "tokendealer:admin tokendealer:read"))
    secrets_out = tmp_path / "secrets.json"
    remote = ("--server", server.url)

    dry = run_cli("apply", apply_file(tmp_path, jwks), *remote, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would create client billing" in dry.stdout.splitlines()
    assert json.loads(run_cli("client", "list", "--json", env=server.env).stdout) == [
        json.loads(run_cli("client", "show", "ops", "--json", env=server.env).stdout)
    ]

    first = run_cli("apply", apply_file(tmp_path, jwks), *remote, "--secrets-out", str(secrets_out), env=env)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"create issuer {GITHUB}"
    assert "create client billing" in lines and "create client deployer" in lines
    assert f"    client_secret: written to {secrets_out}" in lines
    assert stat.S_IMODE(secrets_out.stat().st_mode) == 0o600
    secret = json.loads(secrets_out.read_text())["billing"]
    ISSUED_SECRETS.add(secret)
    token = requests.post(
        server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("billing", secret), timeout=5
    )  # the secret the admin API gave once is the client's
    assert token.status_code == 200, token.text
    assert token.json()["expires_in"] == 600

    again = run_cli("apply", apply_file(tmp_path, jwks), *remote, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == "no changes: the registry already matches the file"

    edit = run_cli("apply", apply_file(tmp_path, jwks, ttl=900), *remote, "--json", env=env)
    assert edit.returncode == 0, edit.stderr
    done = json.loads(edit.stdout)["done"]
    assert done == [{"action": "update", "kind": "client", "name": "billing", "fields": {"token_ttl": {"old": 600, "new": 900}}}]
    assert json.loads(run_cli("client", "show", "billing", "--json", env=server.env).stdout)["token_ttl"] == 900

    kept = run_cli("apply", apply_file(tmp_path, jwks, ttl=900, with_deployer=False), *remote, env=env)
    assert "not deleted (use --prune): client deployer" in kept.stdout and "not deleted (use --prune): client ops" in kept.stdout
    # --prune never deletes the admin client apply runs as (its token would die half-way): the file must name it.
    pruned = run_cli("apply", apply_file(tmp_path, jwks, ttl=900, with_deployer=False), *remote, "--prune", env=env)
    assert pruned.returncode == 1 and "--prune would delete the admin client 'ops' apply runs as" in pruned.stderr
    assert json.loads(run_cli("client", "show", "deployer", "--json", env=server.env).stdout)["client_id"] == "deployer"

    # Every change in the server's audit log, made by the admin client through the admin API. Each worker writes
    # its lines in batches, twice a second: the last change's line may still be on its way.
    wanted = [
        ("issuer.added", GITHUB),
        ("client.created", "billing"),
        ("client.created", "deployer"),
        ("client.federated", "deployer"),
        ("client.updated", "billing"),
    ]
    deadline = time.monotonic() + 10
    while True:
        audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
        changes = [(e["event"], e.get("client_id") or e.get("issuer")) for e in audit if e.get("via") == "admin_api"]
        if changes == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert changes == wanted
    assert {e["actor"] for e in audit if e.get("via") == "admin_api"} == {"ops"}

    # A client changed by someone else after apply read it is not overwritten (the admin API's If-Match).
    session = requests.Session()
    admin = TokenClient(server.url, "ops", env["TOKENDEALER_CLIENT_SECRET"])
    session.auth = TokenAuth(admin, audience=server.url + "/admin", scope="tokendealer:admin", origin=server.url)
    registry = RemoteRegistry(session, server.url)
    plan = reconcile.plan(manifest.load(apply_file(tmp_path, jwks, ttl=1800), server.url), registry.snapshot(), prune=False)
    assert run_cli("client", "update", "billing", "--ttl", "1200", env=server.env).returncode == 0
    outcome = reconcile.execute(plan.changes, registry)
    assert outcome.error == "client 'billing' changed since apply read it; run apply again to see the new difference"
    assert json.loads(run_cli("client", "show", "billing", "--json", env=server.env).stdout)["token_ttl"] == 1200


def test_a_read_only_token_may_plan_but_not_change(live_factory, tmp_path):
    server = live_factory(workers=1)
    env = operator_env(tmp_path, "auditor", admin_client(server, "auditor", "tokendealer:read"))
    path = tmp_path / "clients.toml"
    path.write_text('[[clients]]\nclient_id = "billing"\naudiences = ["https://billing"]\n')
    assert run_cli("apply", str(path), "--server", server.url, "--dry-run", env=env).returncode == 0
    refused = run_cli("apply", str(path), "--server", server.url, env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: cannot get an admin token: ")
    assert refused.stderr.count("\n") == 1


def test_bad_credentials_and_an_unreachable_server_are_one_line(live_factory, tmp_path):
    server = live_factory(workers=1)
    path = tmp_path / "clients.toml"
    path.write_text('[[clients]]\nclient_id = "billing"\naudiences = ["https://billing"]\n')
    wrong = run_cli("apply", str(path), "--server", server.url, env=operator_env(tmp_path, "ops", "not-the-secret"))
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: cannot get an admin token: ") and "not-the-secret" not in wrong.stderr
    nobody = f"http://127.0.0.1:{free_port()}"  # bound once and closed: nothing listens there
    closed = run_cli("apply", str(path), "--server", nobody, "--issuer", server.url, env=operator_env(tmp_path, "ops", "x"))
    assert closed.returncode == 1 and closed.stderr.count("\n") == 1, closed.stderr
    missing = run_cli("apply", str(path), "--server", server.url, env={**operator_env(tmp_path, "ops", "x"), "TOKENDEALER_CLIENT_ID": ""})
    assert missing.returncode == 2 and "--client-id" in missing.stderr


def test_an_admin_api_that_cannot_be_reached_is_told_in_words():
    nobody = f"http://127.0.0.1:{free_port()}"  # bound once and closed: nothing listens there
    with pytest.raises(reconcile.RegistryError, match=r"the admin API cannot be reached \(connection refused\)$"):
        RemoteRegistry(requests.Session(), nobody).snapshot()
