"""`tokendealer apply FILE` (SPEC §5, issue #19): declarative clients, federation rules and issuers."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_lib.jose import public_jwk
from tokendealer import manifest, reconcile
from tokendealer.audit import AuditLog
from tokendealer.cli import main
from tokendealer.config import Config
from tokendealer.management import Management, cli_actor
from tokendealer.registries import LocalRegistry

from .conftest import ISSUED_SECRETS, FakeClock, free_port
from .workload_issuer import WorkloadIssuer

ISSUER = "https://tokens.example.com"
GITHUB = "https://token.actions.githubusercontent.com"

TOML = """
[[clients]]
client_id = "billing"
scopes = ["invoices:read", "invoices:write"]
audiences = ["https://billing"]
token_ttl = 600
claims = {tenant = "acme"}

[[clients]]
client_id = "deployer"
auth_method = "federated"
scopes = ["deploy"]
audiences = ["https://deploy.example.com"]

[[clients.federation]]
issuer = "https://token.actions.githubusercontent.com"
subject = "repo:acme/app:ref:refs/heads/main"
conditions = ["repository_owner=acme", "environment=production"]
"""

YAML = """
clients:
  - client_id: billing
    scopes: [invoices:read, invoices:write]
    audiences: [https://billing]
    token_ttl: 600
    claims: {tenant: acme}
  - client_id: deployer
    auth_method: federated
    scopes: [deploy]
    audiences: [https://deploy.example.com]
    federation:
      - issuer: https://token.actions.githubusercontent.com
        subject: repo:acme/app:ref:refs/heads/main
        conditions: [environment=production, repository_owner=acme]   # order does not matter
"""


@pytest.fixture
def cluster():
    issuer = WorkloadIssuer(FakeClock())
    yield issuer
    issuer.close()


def registry_cli(root: Path, cluster: WorkloadIssuer):
    """The CLI on a fresh registry under `root` that trusts GitHub's issuer (keys given, nothing fetched)."""
    env = {
        "TOKENDEALER_KEYS_DIR": str(root / "keys"),
        "TOKENDEALER_DATABASE_URL": f"sqlite:///{root / 'var' / 'td.db'}",
        "TOKENDEALER_AUDIT_LOG": str(root / "audit.log"),
        "TOKENDEALER_ISSUER": ISSUER,
    }
    runner = CliRunner()

    def run(*args: str):
        result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        for line in result.output.splitlines():  # the conftest scan then proves no secret reached a log
            if "client_secret:" in line and "written to" not in line:
                ISSUED_SECRETS.add(line.split("client_secret:")[1].split()[0])
        return result

    run.env = env  # type: ignore[attr-defined]
    assert run("init").exit_code == 0
    jwks = root / "github-jwks.json"
    jwks.write_text(json.dumps(cluster.jwks()))
    assert run("issuers", "add", GITHUB, "--jwks", str(jwks)).exit_code == 0
    return run


@pytest.fixture
def td(tmp_path, cluster):
    return registry_cli(tmp_path, cluster)


@pytest.fixture(scope="module")
def td_unchanged(tmp_path_factory):
    """One registry for the tests that must leave it as it was (each asserts so): refused files."""
    issuer = WorkloadIssuer(FakeClock())
    yield registry_cli(tmp_path_factory.mktemp("refused"), issuer)
    issuer.close()


def write(tmp_path: Path, text: str, name: str = "clients.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def show(td, client_id: str) -> dict:
    result = td("client", "show", client_id, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def audit_lines(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


def test_apply_again_edit_and_prune_round_trip(td, tmp_path):
    path = write(tmp_path, TOML)
    first = td("apply", path)
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert "create client billing" in lines and "create client deployer" in lines
    assert "    token_ttl: 600" in lines and '    auth_method: "federated"' in lines
    assert any(line.startswith("    client_secret: ") and "(shown once)" in line for line in lines)
    assert sum(line.startswith("    client_secret:") for line in lines) == 1  # only billing has a secret
    assert any(line.startswith("create federation rule of deployer: issuer=" + GITHUB) for line in lines)
    billing = show(td, "billing")
    assert billing["scopes"] == ["invoices:read", "invoices:write"] and billing["claims"] == {"tenant": "acme"}
    assert show(td, "deployer")["auth_method"] == "federated"

    again = td("apply", path)
    assert again.exit_code == 0
    assert again.output.splitlines()[-1] == "no changes: the registry already matches the file"
    assert not any(line.startswith(("create", "update", "delete")) for line in again.output.splitlines())

    edited = TOML.replace("token_ttl = 600", "token_ttl = 900").replace(
        '"invoices:write"]', '"invoices:write", "invoices:admin"]\nrequire_dpop = true'
    )
    edit = td("apply", write(tmp_path, edited))
    assert edit.exit_code == 0, edit.output
    changed = [line for line in edit.output.splitlines() if not line.startswith("unchanged: ")]
    assert changed == [
        "update client billing",
        '    scopes: ["invoices:read", "invoices:write"] -> ["invoices:read", "invoices:write", "invoices:admin"]',
        "    token_ttl: 600 -> 900",
        "    require_dpop: false -> true",
    ]
    assert show(td, "billing")["token_ttl"] == 900

    # The deployer goes from the file: kept (and said so) until --prune.
    only_billing = edited[: edited.index('[[clients]]\nclient_id = "deployer"')]
    kept = td("apply", write(tmp_path, only_billing))
    assert kept.exit_code == 0 and "not deleted (use --prune): client deployer" in kept.output
    assert show(td, "deployer")["client_id"] == "deployer"
    pruned = td("apply", write(tmp_path, only_billing), "--prune")
    assert pruned.exit_code == 0 and "delete client deployer" in pruned.output.splitlines()
    assert td("client", "show", "deployer").exit_code == 1
    assert td("apply", write(tmp_path, only_billing), "--prune").output.splitlines()[-1].startswith("no changes")

    # Each change audited as made through apply, by whoever ran it (the management layer's actor).
    events = [(e["event"], e.get("client_id")) for e in audit_lines(tmp_path) if e.get("via") == "apply"]
    assert events == [
        ("client.created", "billing"),
        ("client.created", "deployer"),
        ("client.federated", "deployer"),
        ("client.updated", "billing"),
        ("client.deleted", "deployer"),
    ]
    assert {e["actor"] for e in audit_lines(tmp_path) if e.get("via") == "apply"} == {cli_actor()}


def test_yaml_and_toml_describe_the_same_registry(td, tmp_path):
    assert td("apply", write(tmp_path, TOML)).exit_code == 0
    result = td("apply", write(tmp_path, YAML, "clients.yaml"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["plan"]["changes"] == [] and data["done"] == [] and data["failed"] is None
    assert len(data["plan"]["unchanged"]) == 3


def test_dry_run_changes_nothing(td, tmp_path):
    before = (tmp_path / "audit.log").read_text()
    result = td("apply", write(tmp_path, TOML), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["dry_run"] is True and "done" not in data
    assert [(c["action"], c["kind"], c["name"]) for c in data["plan"]["changes"]] == [
        ("create", "client", "billing"),
        ("create", "client", "deployer"),
        ("create", "rule", "deployer"),
    ]
    assert json.loads(td("client", "list", "--json").output) == []
    assert (tmp_path / "audit.log").read_text() == before
    text = td("apply", write(tmp_path, TOML), "--dry-run")
    assert text.output.splitlines()[0] == "would create client billing" and "    client_secret:" not in text.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("token_ttl = 600", "token_ttl = -5"), "clients[0] (billing): token_ttl: has the wrong type or value"),
        (("token_ttl = 600", 'token_ttl = "600"'), "clients[0] (billing): token_ttl: has the wrong type or value"),
        (("token_ttl = 600", "token_ttl = 600\nttl = 5"), "clients[0] (billing): unknown field 'ttl'"),
        (('client_id = "billing"', 'client_id = "bil ling"'), "clients[0] (bil ling): client_id: 'bil ling' does not match"),
        (("token_ttl = 600", 'token_ttl = 600\nclient_secret = "s3cret"'), "clients[0] (billing): client_secret: secrets never live"),
        (('audiences = ["https://billing"]', ""), "clients[0] (billing): 'audiences' is a required property"),
        (('client_id = "deployer"', 'client_id = "billing"'), "clients[1] (billing): client_id: 'billing' appears twice"),
        (("token_ttl = 600", 'default_audience = "https://other"'), "clients[0] (billing): --default-audience must be one of"),
        (("token_ttl = 600", "token_ttl = 999999"), "clients[0] (billing): --ttl must not exceed the maximum token lifetime"),
        (("tenant = ", "iss = "), "clients[0] (billing): claim 'iss' is set by the server"),
        (('"invoices:read"', '"invoices\\"read"'), "clients[0] (billing): invalid scope"),
        (
            ('auth_method = "federated"', 'auth_method = "private_key_jwt"'),
            "(deployer): auth_method: private_key_jwt needs jwks",
        ),
        (('subject = "repo:acme/app:ref:refs/heads/main"', 'subject = "*"'), "clients[1] (deployer): federation[0].subject"),
        (("repository_owner=acme", "no-equals-sign"), "clients[1] (deployer): federation[0].conditions[0]"),
        (("https://token.actions", "https://unknown.example"), "clients[1] (deployer): federation: 'https://unknown.example"),
        (("[[clients]]", "clientz = 1\n[[clients]]"), "the file: unknown field 'clientz'"),
    ],
)
def test_bad_files_get_one_line_naming_entry_and_field(td_unchanged, tmp_path, change, message):
    td = td_unchanged
    result = td("apply", write(tmp_path, TOML.replace(*change, 1)))
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
    assert message in result.output, result.output
    assert "s3cret" not in result.output
    assert json.loads(td("client", "list", "--json").output) == []


def test_unreadable_and_malformed_files(td_unchanged, tmp_path):
    td = td_unchanged
    assert "must end in .toml" in td("apply", write(tmp_path, TOML, "clients.txt")).output
    assert "not valid TOML" in td("apply", write(tmp_path, "[[clients]\n")).output
    bad_yaml = td("apply", write(tmp_path, "clients:\n  - client_id: [\n", "c.yaml"))
    assert bad_yaml.exit_code == 1 and "not valid YAML at line" in bad_yaml.output
    assert "cannot read" in td("apply", str(tmp_path / "missing.toml")).output
    assert "the file: clients: None is not of type 'array'" in td("apply", write(tmp_path, "clients:\n", "c.yaml")).output
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nclients: [*b]\n"
    assert "not valid YAML at line 2, column 8 (aliases (*name) are not allowed)" in td("apply", write(tmp_path, bomb, "c.yaml")).output
    twice = "clients:\n  - client_id: a\n    audiences: [x]\n    audiences: [y]\n"
    assert "not valid YAML at line 4, column 5 (key 'audiences' appears twice)" in td("apply", write(tmp_path, twice, "c.yaml")).output


def test_schema_ships_in_the_package_and_accepts_client_show_output(td, tmp_path):
    assert manifest.schema()["$defs"]["client"]["additionalProperties"] is False
    assert td("apply", write(tmp_path, TOML)).exit_code == 0
    # `client list --json` output, wrapped, is an apply file (JSON read as YAML; read-only fields ignored).
    listed = json.loads(td("client", "list", "--json").output)
    rules = json.loads(td("client", "federate", "deployer", "--list", "--json").output)
    for entry in listed:
        if entry["client_id"] == "deployer":
            entry["federation"] = [{k: r[k] for k in ("issuer", "subject", "audience", "conditions", "single_use")} for r in rules]
    result = td("apply", write(tmp_path, json.dumps({"clients": listed}), "export.json"))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("no changes")


def test_secrets_out_is_created_owner_only_and_merged(td, tmp_path):
    out = tmp_path / "secrets.json"
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        result = td("apply", write(tmp_path, TOML), "--secrets-out", str(out))
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0, result.output
    assert f"    client_secret: written to {out}" in result.output.splitlines()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    secrets = json.loads(out.read_text())
    assert list(secrets) == ["billing"] and secrets["billing"] not in result.output
    ISSUED_SECRETS.add(secrets["billing"])
    more = TOML + '\n[[clients]]\nclient_id = "reports"\naudiences = ["https://reports"]\n'
    assert td("apply", write(tmp_path, more), "--secrets-out", str(out), "--json").exit_code == 0
    merged = json.loads(out.read_text())
    assert sorted(merged) == ["billing", "reports"] and merged["billing"] == secrets["billing"]
    ISSUED_SECRETS.add(merged["reports"])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o602])
def test_secrets_out_with_looser_permissions_is_refused_before_any_change(td, tmp_path, mode):
    out = tmp_path / "secrets.json"
    out.write_text("{}")
    out.chmod(mode)
    result = td("apply", write(tmp_path, TOML), "--secrets-out", str(out))
    assert result.exit_code == 1 and f"mode {mode:04o} lets others read or write it" in result.output
    assert json.loads(td("client", "list", "--json").output) == []
    assert out.read_text() == "{}"


def test_secrets_out_symlink_is_refused(td, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    target.chmod(0o600)
    link = tmp_path / "secrets.json"
    link.symlink_to(target)
    result = td("apply", write(tmp_path, TOML), "--secrets-out", str(link))
    assert result.exit_code == 1 and "not a regular file" in result.output


def test_no_new_secrets_refuses_secret_clients(td, tmp_path):
    result = td("apply", write(tmp_path, TOML), "--no-new-secrets")
    assert result.exit_code == 1 and "clients[0] (billing): would get a client secret" in result.output
    secretless = TOML.replace('client_id = "billing"', 'client_id = "billing"\nauth_method = "federated"')
    assert td("apply", write(tmp_path, secretless), "--no-new-secrets").exit_code == 0


def test_federation_rules_are_matched_by_content(td, tmp_path):
    assert td("apply", write(tmp_path, TOML)).exit_code == 0
    (rule_id,) = [r["rule_id"] for r in json.loads(td("client", "federate", "deployer", "--list", "--json").output)]
    single = TOML + "single_use = true\n"
    result = td("apply", write(tmp_path, single))
    assert result.exit_code == 0, result.output
    assert "    single_use: false -> true" in result.output.splitlines()
    (after,) = json.loads(td("client", "federate", "deployer", "--list", "--json").output)
    assert after["single_use"] is True and after["rule_id"] != rule_id
    # Another rule replaces it in the file: added at once, the old one deleted only with --prune.
    other = single.replace("refs/heads/main", "refs/heads/release")
    kept = td("apply", write(tmp_path, other))
    assert any(line.startswith("not deleted (use --prune): federation rule of deployer") for line in kept.output.splitlines())
    assert len(json.loads(td("client", "federate", "deployer", "--list", "--json").output)) == 2
    assert td("apply", write(tmp_path, other), "--prune").exit_code == 0
    (left,) = json.loads(td("client", "federate", "deployer", "--list", "--json").output)
    assert left["subject"] == "repo:acme/app:ref:refs/heads/release" and left["audience"] == ISSUER


def with_issuers(tmp_path: Path, *issuers: dict, clients: str = TOML) -> str:
    """An apply file (JSON) of the TOML document's clients and these issuers."""
    document = {"issuers": list(issuers), **tomllib.loads(clients)}
    return write(tmp_path, json.dumps(document), "clients.json")


def test_issuers_are_managed_when_the_file_lists_them(td, tmp_path, cluster):
    github = {"issuer": GITHUB, "jwks": cluster.jwks()}
    result = td("apply", with_issuers(tmp_path, github, {"issuer": cluster.url}), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(c["action"], c["kind"], c["name"]) for c in data["done"]][:1] == [("create", "issuer", cluster.url)]
    assert "issuer " + GITHUB in data["plan"]["unchanged"]
    # Dropped from the listed issuers: deleted only with --prune (its rules with it).
    without = with_issuers(tmp_path, {"issuer": cluster.url}, clients=TOML.split("[[clients.federation]]")[0])
    kept = td("apply", without)
    assert f"not deleted (use --prune): issuer {GITHUB}" in kept.output
    assert td("apply", without, "--prune").exit_code == 0
    assert [i["issuer"] for i in json.loads(td("issuers", "list", "--json").output)] == [cluster.url]


def test_a_failure_midway_says_what_was_done_and_what_was_not(td, tmp_path, cluster):
    cluster.down = True  # its discovery fails when the issuer is added, after the first issuer was
    extra = {"issuer": "https://issuer.example.com", "jwks": cluster.jwks()}
    result = td("apply", with_issuers(tmp_path, {"issuer": GITHUB, "jwks": cluster.jwks()}, extra, {"issuer": cluster.url}))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "create issuer https://issuer.example.com"
    failed = lines.index(f"FAILED: create issuer {cluster.url}")
    assert any(line.startswith("    error: discovery at ") for line in lines[failed:])
    assert "not attempted: create client billing" in lines
    assert lines[-1].startswith(f"error: stopped at create issuer {cluster.url}: discovery at ")
    assert lines[-1].endswith("(the changes above it were made)")
    assert json.loads(td("client", "list", "--json").output) == []
    assert "https://issuer.example.com" in td("issuers", "list").output


def test_a_failure_at_the_first_change_says_nothing_was_changed(td, tmp_path, cluster):
    cluster.down = True
    result = td("apply", with_issuers(tmp_path, {"issuer": GITHUB, "jwks": cluster.jwks()}, {"issuer": cluster.url}))
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].endswith("(nothing was changed)")
    assert "or `jwks` in an apply file" in result.output


def test_auth_method_cannot_change_to_or_from_a_secret(td, tmp_path):
    assert td("apply", write(tmp_path, TOML)).exit_code == 0
    flipped = TOML.replace('client_id = "billing"', 'client_id = "billing"\nauth_method = "federated"')
    result = td("apply", write(tmp_path, flipped))
    assert result.exit_code == 1
    assert "clients[0] (billing): auth_method: client_secret -> federated cannot be changed in place" in result.output


def test_disabled_clients_and_enabling_them(td, tmp_path):
    disabled = TOML.replace("token_ttl = 600", "token_ttl = 600\nenabled = false")
    assert td("apply", write(tmp_path, disabled)).exit_code == 0
    assert show(td, "billing")["enabled"] is False
    # A file that does not state `enabled` leaves it alone: an emergency `client disable` survives the next apply.
    assert td("apply", write(tmp_path, TOML)).output.splitlines()[-1].startswith("no changes")
    assert show(td, "billing")["enabled"] is False
    result = td("apply", write(tmp_path, TOML.replace("token_ttl = 600", "token_ttl = 600\nenabled = true")))
    assert "    enabled: false -> true" in result.output.splitlines()
    assert show(td, "billing")["enabled"] is True
    assert [e["event"] for e in audit_lines(tmp_path) if e.get("client_id") == "billing"][-1] == "client.enabled"


def test_a_client_changed_after_the_plan_was_made_is_not_overwritten(td, tmp_path):
    assert td("apply", write(tmp_path, TOML)).exit_code == 0
    manage = Management.open(Config.load(environ=td.env), AuditLog(td.env["TOKENDEALER_AUDIT_LOG"]))
    registry = LocalRegistry(manage, "test")
    edited = manifest.load(write(tmp_path, TOML.replace("token_ttl = 600", "token_ttl = 900")), ISSUER)
    plan = reconcile.plan(edited, registry.snapshot(), prune=False)
    assert td("client", "update", "billing", "--ttl", "1200").exit_code == 0  # another operator, meanwhile
    outcome = reconcile.execute(plan.changes, registry)
    assert outcome.failed is plan.changes[0] and outcome.done == []
    assert outcome.error == "client 'billing' changed since apply read it; run apply again to see the new difference"
    assert show(td, "billing")["token_ttl"] == 1200


def test_the_readme_example_is_a_valid_apply_file():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Declarative clients (apply)") :]
    example = section[section.index("```toml\n") + len("```toml\n") : section.index("```\n")]
    parsed = manifest.parse(tomllib.loads(example), ISSUER)
    assert [c.client_id for c in parsed.clients] == ["invoices-api", "deployer"]
    assert parsed.clients[1].rules[0].audience == ISSUER and parsed.issuers is not None


def test_server_mode_refuses_at_once_when_the_server_cannot_be_reached(tmp_path):
    path = write(tmp_path, TOML)
    nobody = f"http://127.0.0.1:{free_port()}"  # bound once and closed: nothing listens there
    env = {"TOKENDEALER_CLIENT_ID": "ops", "TOKENDEALER_CLIENT_SECRET": "s3cret-" + "x" * 20}
    result = CliRunner().invoke(main, ["apply", path, "--server", nobody], env=env)
    assert result.exit_code == 1 and result.output.startswith("error: cannot get an admin token: "), result.output
    assert result.output.count("\n") == 1 and "s3cret" not in result.output
    without = CliRunner().invoke(main, ["apply", path, "--server", nobody], env={**env, "TOKENDEALER_CLIENT_SECRET": ""})
    assert without.exit_code == 2 and "exactly one of a secret" in without.output


def test_keyed_certificate_and_exchange_clients_round_trip(td, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [public_jwk(key.public_key(), "ES256")]}
    document = {
        "clients": [
            {"client_id": "signer", "audiences": ["https://a"], "jwks": jwks},
            {"client_id": "fetcher", "audiences": ["https://a"], "jwks_uri": "https://fetcher.example/jwks.json"},
            {"client_id": "mtls", "audiences": ["https://a"], "tls_san": "spiffe://example/mtls", "require_dpop": True},
            {"client_id": "svc-b", "audiences": ["https://c"], "serves": ["https://b"], "exchange_audiences": ["https://c"]},
        ]
    }
    path = write(tmp_path, json.dumps(document), "keyed.json")
    first = td("apply", path, "--json")
    assert first.exit_code == 0, first.output
    assert "client_secrets" in json.loads(first.output) and list(json.loads(first.output)["client_secrets"]) == ["svc-b"]
    ISSUED_SECRETS.update(json.loads(first.output)["client_secrets"].values())
    methods = {c["client_id"]: c["auth_method"] for c in json.loads(td("client", "list", "--json").output)}
    assert methods == {"signer": "private_key_jwt", "fetcher": "private_key_jwt", "mtls": "tls_client_auth", "svc-b": "client_secret"}
    assert td("apply", path).output.splitlines()[-1].startswith("no changes")
    document["clients"][0]["jwks"] = {"keys": [public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), "ES256")]}
    rotated = td("apply", write(tmp_path, json.dumps(document), "keyed.json"))
    (line,) = [line for line in rotated.output.splitlines() if line.startswith("    jwks: ")]
    old, new = (k["kid"] for k in (jwks["keys"][0], document["clients"][0]["jwks"]["keys"][0]))
    assert line == f'    jwks: {{"kids": ["{old}"]}} -> {{"kids": ["{new}"]}}'


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(sorted(manifest.schema()["$defs"]["client"]["properties"]) + ["client_secret", "x"])


VALID = {"client_id": "billing", "audiences": ["https://billing"]}
ENTRIES = st.dictionaries(FIELDS, JSON_VALUES, max_size=5).flatmap(
    lambda extra: st.sampled_from([extra, {**VALID, **extra}, {**extra, **VALID}])
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRIES, max_size=3), st.one_of(st.none(), JSON_VALUES))
def test_any_document_is_a_manifest_or_one_manifest_error(entries, issuers):
    document: dict = {"clients": entries}
    if issuers is not None:
        document["issuers"] = issuers
    try:
        parsed = manifest.parse(document, ISSUER)
    except manifest.ManifestError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert len(parsed.clients) == len(entries)


class FailingOnRules:
    """A registry that takes clients and refuses every federation rule (as a server might, midway)."""

    def __init__(self):
        self.created: list[str] = []

    def create_client(self, client):
        self.created.append(client.client_id)
        return "secret-of-" + client.client_id if client.auth_method == "client_secret" else None

    def add_rule(self, client_id, rule):
        raise reconcile.RegistryError("rules are refused here")


def test_a_refusal_midway_keeps_the_secrets_of_clients_already_created():
    wanted = manifest.parse(tomllib.loads(TOML), ISSUER)
    empty = reconcile.Snapshot({}, {}, {GITHUB: {"issuer": GITHUB, "keys": "discovery", "kids": None, "allow_http": False}})
    plan = reconcile.plan(wanted, empty, prune=False)
    registry = FailingOnRules()
    outcome = reconcile.execute(plan.changes, registry)  # type: ignore[arg-type]
    assert registry.created == ["billing", "deployer"] and outcome.secrets == {"billing": "secret-of-billing"}
    assert outcome.failed is plan.changes[2] and outcome.error == "rules are refused here"
    lines = reconcile.report(plan, outcome, None)
    assert "    client_secret: secret-of-billing   (shown once)" in lines
    failed = next(i for i, line in enumerate(lines) if line.startswith("FAILED: create federation rule of deployer: issuer="))
    assert lines[failed + 1] == "    error: rules are refused here"
