"""The shared management layer (tokendealer/management.py): the rules the CLI and the admin API both go
through, its four kinds of refusal, ETag preconditions, pagination and the audit line naming the actor."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tokendealer.audit import AuditLog
from tokendealer.cli import main
from tokendealer.management import READ_ONLY, WRITABLE, Conflict, Invalid, Management, Missing, Stale, client_fields, domain_errors, etag

from .conftest import both_databases

AUDIENCE = "https://api.example.com"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    return both_databases(request)


@pytest.fixture
def manage(config, key_store, clock):
    audit = AuditLog(config.audit_log, clock)
    yield Management.open(config, audit, clock)
    audit.close()


def audit_lines(config) -> list[dict]:
    with open(config.audit_log) as f:
        return [json.loads(line) for line in f]


def test_every_change_is_audited_with_its_actor(manage, config):
    manage.create_client("ops-bot", "admin_api", "svc", scopes=["a"], audiences=[AUDIENCE])
    manage.update_client("ops-bot", "admin_api", "svc", {"scopes": ("a", "b")})
    manage.set_enabled("ops-bot", "admin_api", "svc", False)
    manage.rotate_secret("ops-bot", "admin_api", "svc", 0)
    manage.rotate_keys("ops-bot", "admin_api")
    manage.delete_client("ops-bot", "admin_api", "svc")
    events = [(line["event"], line["actor"], line["via"]) for line in audit_lines(config) if line.get("actor") == "ops-bot"]
    assert [e[0] for e in events] == [
        "client.created",
        "client.updated",
        "client.disabled",
        "client.secret_rotated",
        "keys.rotated",
        "client.deleted",
    ]
    assert {e[2] for e in events} == {"admin_api"}


def test_refusals_have_four_kinds(manage):
    manage.create_client("me", "cli", "svc", scopes=["a"], audiences=[AUDIENCE])
    with pytest.raises(Conflict, match="already exists"):
        manage.create_client("me", "cli", "svc", scopes=["a"], audiences=[AUDIENCE])
    with pytest.raises(Missing, match="no client 'nope'"):
        manage.show_client("nope")
    with pytest.raises(Missing):
        manage.remove_rule("me", "cli", "svc", "fr_0")
    with pytest.raises(Missing):
        manage.remove_issuer("me", "cli", "https://nowhere.example")
    with pytest.raises(Invalid, match="at least one --audience"):
        manage.create_client("me", "cli", "other", scopes=["a"], audiences=[])
    with pytest.raises(Invalid, match="nothing to update"):
        manage.update_client("me", "cli", "svc", {})


def test_if_match_refuses_a_stale_version(manage):
    client, _ = manage.create_client("me", "cli", "svc", scopes=["a"], audiences=[AUDIENCE])
    first = etag(client)
    updated = manage.update_client("me", "cli", "svc", {"token_ttl": 60}, if_match=first)
    assert etag(updated) != first
    with pytest.raises(Stale, match="has changed since it was read"):
        manage.update_client("me", "cli", "svc", {"token_ttl": 90}, if_match=first)
    with pytest.raises(Stale):
        manage.delete_client("me", "cli", "svc", if_match=first)
    manage.delete_client("me", "cli", "svc", if_match=etag(updated))
    with pytest.raises(Missing):
        manage.show_client("svc")


def test_every_write_changes_the_etag_even_within_one_clock_tick(manage, clock):
    client, _ = manage.create_client("me", "cli", "svc", scopes=["a"], audiences=[AUDIENCE])
    tags = {etag(client)}
    for enabled in (False, True, False):
        tags.add(etag(manage.set_enabled("me", "cli", "svc", enabled)))
    assert len(tags) == 4


def test_a_write_racing_another_is_refused(manage):
    """The store writes only the version it read (compare-and-set on updated_at)."""
    manage.create_client("me", "cli", "svc", scopes=["a"], audiences=[AUDIENCE])

    def meanwhile(client):
        manage.set_enabled("other", "cli", "svc", False)

    with pytest.raises(Stale, match="changed meanwhile"), domain_errors():
        manage.clients.update("svc", check=meanwhile, token_ttl=60)


def test_pagination_is_by_client_id(manage):
    for name in ("c", "a", "d", "b"):
        manage.create_client("me", "cli", name, scopes=["s"], audiences=[AUDIENCE])
    first = manage.list_clients(limit=3)
    assert [c.client_id for c in first] == ["a", "b", "c"]
    assert [c.client_id for c in manage.list_clients(after="c", limit=3)] == ["d"]


def test_client_fields_takes_show_json_and_refuses_unknown_fields(manage):
    client, _ = manage.create_client("me", "cli", "svc", scopes=["a"], audiences=[AUDIENCE])
    shown = client.public_view()
    assert client_fields({**shown, "token_ttl": 60}, client) == {
        k: (tuple(v) if isinstance(v, list) else v)
        for k, v in {**shown, "token_ttl": 60}.items()
        if k not in ("client_id", "auth_method", "enabled", "created_at", "updated_at", "tokens_not_before", "previous_secret_expires_at")
    }
    with pytest.raises(Invalid, match="unknown field 'colour'"):
        client_fields({"colour": "red"})
    with pytest.raises(Invalid, match="'enabled' is set by the server"):
        client_fields({**shown, "enabled": False}, client)
    with pytest.raises(Invalid, match="'created_at' is set by the server"):
        client_fields({"created_at": 1})
    with pytest.raises(Invalid, match="must be a list of strings"):
        client_fields({"scopes": "a b"})
    with pytest.raises(Invalid, match="integer number of seconds"):
        client_fields({"token_ttl": True})
    with pytest.raises(Invalid, match="must be a JSON object"):
        client_fields([])
    with pytest.raises(Invalid, match="'client_id' cannot be changed"):
        client_fields({"client_id": "other"}, client)


def test_api_and_cli_refuse_with_the_same_text(manage, config, tmp_path):
    """One copy of the rules: the CLI's error line is the service layer's message."""
    with pytest.raises(Invalid) as caught:
        manage.create_client("me", "cli", "svc", scopes=["a"], audiences=[AUDIENCE], default_audience="https://other")
    env = {
        "TOKENDEALER_KEYS_DIR": str(config.keys_dir),
        "TOKENDEALER_DATABASE_URL": config.database_url,
        "TOKENDEALER_AUDIT_LOG": config.audit_log,
    }
    result = CliRunner().invoke(
        main, ["client", "create", "svc", "--scope", "a", "--audience", AUDIENCE, "--default-audience", "https://other"], env=env
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {caught.value}"


def test_cli_changes_are_audited_as_the_os_user(manage, config):
    env = {
        "TOKENDEALER_KEYS_DIR": str(config.keys_dir),
        "TOKENDEALER_DATABASE_URL": config.database_url,
        "TOKENDEALER_AUDIT_LOG": config.audit_log,
    }
    result = CliRunner().invoke(main, ["client", "create", "svc", "--scope", "a", "--audience", AUDIENCE], env=env)
    assert result.exit_code == 0, result.output
    created = [line for line in audit_lines(config) if line["event"] == "client.created"]
    assert created[-1]["actor"].startswith("cli") and created[-1]["via"] == "cli"


def test_every_shown_field_is_either_writable_or_read_only(manage):
    """A field added to Client is read-only for the API until made writable, so GET-then-PATCH keeps working."""
    client, _ = manage.create_client("me", "cli", "svc", scopes=["a"], audiences=[AUDIENCE])
    assert set(client.public_view()) == WRITABLE | READ_ONLY | {"client_id"}
