"""The `tokendealer` command line: output, --json, exit codes 0/1/2, --help everywhere."""

from __future__ import annotations

import json
import secrets

import pytest
from click.testing import CliRunner

from tokendealer.cli import main


@pytest.fixture
def cli(tmp_path):
    env = {
        "TOKENDEALER_KEYS_DIR": str(tmp_path / "keys"),
        "TOKENDEALER_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'td.db'}",
        "TOKENDEALER_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    runner = CliRunner()

    def run(*args: str, **kwargs):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False, **kwargs)

    assert run("init").exit_code == 0
    return run


def test_init_is_idempotent(cli, tmp_path):
    manifest = (tmp_path / "keys" / "manifest.json").read_text()
    result = cli("init", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["keys_created"] is False
    assert (tmp_path / "keys" / "manifest.json").read_text() == manifest
    assert oct((tmp_path / "keys").stat().st_mode & 0o777) == "0o700"
    for pem in (tmp_path / "keys").glob("*.pem"):
        assert oct(pem.stat().st_mode & 0o777) == "0o600"


def test_client_create_prints_secret_once(cli):
    result = cli(
        "client",
        "create",
        "billing",
        "--scope",
        "invoices:read invoices:write",
        "--audience",
        "https://billing",
        "--claim",
        "tier=gold",
        "--claim",
        "level=3",
    )
    assert result.exit_code == 0
    created = json.loads(result.output)
    assert created["client_id"] == "billing"
    assert len(created["client_secret"]) >= 43
    assert created["scopes"] == ["invoices:read", "invoices:write"]
    assert created["claims"] == {"tier": "gold", "level": 3}
    for args in (("client", "show", "billing"), ("client", "show", "billing", "--json"), ("client", "list"), ("client", "list", "--json")):
        out = cli(*args)
        assert out.exit_code == 0
        assert created["client_secret"] not in out.output
        assert "secret_hash" not in out.output
    assert json.loads(cli("client", "list", "--json").output)[0]["client_id"] == "billing"


def test_client_update_disable_enable_delete(cli):
    cli("client", "create", "svc", "--scope", "a", "--audience", "https://x")
    updated = json.loads(cli("client", "update", "svc", "--scope", "b", "--scope", "c", "--ttl", "60").output)
    assert updated["scopes"] == ["b", "c"] and updated["token_ttl"] == 60
    assert json.loads(cli("client", "disable", "svc", "--json").output)["result"] == "disable"
    assert json.loads(cli("client", "show", "svc", "--json").output)["enabled"] is False
    cli("client", "enable", "svc")
    assert json.loads(cli("client", "show", "svc", "--json").output)["enabled"] is True
    assert cli("client", "delete", "svc").exit_code == 0
    assert cli("client", "show", "svc").exit_code == 1


def test_rotate_secret_prints_new_secret(cli):
    cli("client", "create", "svc", "--scope", "a", "--audience", "https://x")
    result = cli("client", "rotate-secret", "svc", "--grace", "30", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert len(data["client_secret"]) >= 43 and data["previous_secret_valid_until"]


@pytest.mark.parametrize(
    "args",
    [
        ("client", "show", "nope"),
        ("client", "delete", "nope"),
        ("client", "rotate-secret", "nope"),
        ("client", "create", "bad name", "--audience", "https://x"),
        ("client", "create", "svc", "--scope", "a"),
        ("client", "create", "svc", "--audience", "https://x", "--claim", "noequals"),
        ("client", "create", "svc", "--audience", "https://x", "--jwks", "/nonexistent.json"),
    ],
)
def test_refused_requests_exit_1_with_one_line(cli, args):
    result = cli(*args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_duplicate_create_exits_1(cli):
    cli("client", "create", "svc", "--audience", "https://x")
    assert cli("client", "create", "svc", "--audience", "https://x").exit_code == 1


@pytest.mark.parametrize(
    "args",
    [("client", "bogus"), ("client", "show"), ("keys", "rotate", "--alg", "HS256"), ("serve", "--port", "0"), ("client", "update", "svc")],
)
def test_bad_usage_exits_2(cli, args):
    cli("client", "create", "svc", "--audience", "https://x")
    assert cli(*args).exit_code == 2


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("init",),
        ("serve",),
        ("client",),
        ("client", "create"),
        ("client", "list"),
        ("client", "show"),
        ("client", "update"),
        ("client", "disable"),
        ("client", "enable"),
        ("client", "delete"),
        ("client", "rotate-secret"),
        ("keys",),
        ("keys", "init"),
        ("keys", "rotate"),
        ("keys", "prune"),
        ("keys", "list"),
        ("token",),
        ("verify",),
        ("db",),
        ("db", "upgrade"),
        ("client", "jwks"),
    ],
)
def test_help_on_every_level(cli, args):
    result = cli(*args, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_bad_config_exits_2_naming_the_variable(tmp_path):
    result = CliRunner().invoke(main, ["keys", "list"], env={"TOKENDEALER_TOKEN_TTL": "-1"})
    assert result.exit_code == 2
    assert result.output.strip() == "error: TOKENDEALER_TOKEN_TTL must be a positive number of seconds"


def test_keys_list_json(cli):
    rows = json.loads(cli("keys", "list", "--json").output)
    assert sorted(r["state"] for r in rows) == ["active", "next"]
    assert all(r["alg"] == "ES256" for r in rows)
    table = cli("keys", "list").output
    assert "active" in table and "next" in table


def test_keys_init_with_alg(tmp_path):
    env = {
        "TOKENDEALER_KEYS_DIR": str(tmp_path / "k2"),
        "TOKENDEALER_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "TOKENDEALER_AUDIT_LOG": str(tmp_path / "a.log"),
    }
    result = CliRunner().invoke(main, ["keys", "init", "--alg", "RS256", "--json"], env=env)
    assert result.exit_code == 0
    assert {r["alg"] for r in json.loads(result.output)} == {"RS256"}


def test_verify_refuses_garbage(cli):
    result = cli("verify", "not-a-token", "--audience", "https://x")
    assert result.exit_code == 1
    assert result.output.startswith("error: invalid token")


def test_db_upgrade_is_idempotent(cli):
    for _ in range(2):
        result = cli("db", "upgrade", "--json")
        assert result.exit_code == 0 and json.loads(result.output) == {"database": "upgraded"}


def test_database_keyring_from_the_command_line(tmp_path):
    env = {
        "TOKENDEALER_KEYS_DIR": str(tmp_path / "unused"),
        "TOKENDEALER_DATABASE_URL": f"sqlite:///{tmp_path / 'td.db'}",
        "TOKENDEALER_AUDIT_LOG": str(tmp_path / "audit.log"),
        "TOKENDEALER_KEYRING": "database",
        "TOKENDEALER_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32),
    }
    runner = CliRunner()
    assert runner.invoke(main, ["init"], env=env).exit_code == 0
    assert not (tmp_path / "unused" / "manifest.json").exists()
    rotated = runner.invoke(main, ["keys", "rotate", "--json"], env=env)
    assert rotated.exit_code == 0
    assert sorted(r["state"] for r in json.loads(rotated.stdout)) == ["active", "next", "retired"]
    created = runner.invoke(main, ["client", "create", "svc", "--audience", "https://x"], env=env)
    assert created.exit_code == 0 and json.loads(created.stdout)["client_secret"]


def test_client_bound_token_options(cli):
    created = json.loads(cli("client", "create", "edge", "--scope", "a", "--audience", "https://x", "--tls-subject", "CN=edge").output)
    assert "client_secret" not in created and created["auth_method"] == "tls_client_auth"
    updated = json.loads(cli("client", "update", "edge", "--require-dpop").output)
    assert updated["require_dpop"] is True and updated["tls_subject"] == "CN=edge"
    assert json.loads(cli("client", "update", "edge", "--no-require-dpop").output)["require_dpop"] is False
    refused = cli("client", "create", "both", "--audience", "https://x", "--tls-subject", "CN=a", "--tls-san", "a.example")
    assert refused.exit_code == 1 and "either --tls-subject or --tls-san" in refused.output


def test_init_prints_how_to_create_the_first_admin_client(cli):
    command = "tokendealer client create admin --scope tokendealer:admin --scope tokendealer:read --audience http://localhost:5000/admin"
    assert command in cli("init").output
    assert json.loads(cli("init", "--json").output)["admin_bootstrap"] == command
    created = cli(*command.split()[1:])
    assert created.exit_code == 0, created.output
