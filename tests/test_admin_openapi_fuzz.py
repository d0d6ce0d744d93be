"""schemathesis against the admin API and registration of a live server, with an admin token: no 5xx, no
response outside /openapi.json. Bounded: 25 examples per operation."""

from __future__ import annotations

import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import AUDIENCE, LiveServer, free_port, run_cli, server_env
from .test_openapi_fuzz import CHECKS

pytestmark = [pytest.mark.slow]

LIMITS = json.dumps([AUDIENCE])
# Fetched fresh for each operation: a fuzzed emergency rotation withdraws the key that signed the last one.
ADMIN_SCOPES = "tokendealer:admin tokendealer:read tokendealer:register"
# Trusting an issuer fetches its discovery document from the (generated) URL: not from a test on loopback only.
NOT_FUZZED = {"POST /admin/issuers"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adminfuzz")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = server_env(tmp, TOKENDEALER_ISSUER=issuer, TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS="100000/minute")
    assert run_cli("init", env=env).returncode == 0
    limits = f"registration_audiences={LIMITS}"
    created = run_cli("client", "create", "ops", "--scope", ADMIN_SCOPES, "--audience", issuer + "/admin", "--claim", limits, env=env)
    assert created.returncode == 0, created.stderr
    run_cli("client", "create", "svc", "--scope", "read", "--audience", AUDIENCE, env=env)
    live = LiveServer(env, workers=2, port=port).start()
    live.admin_secret = json.loads(created.stdout)["client_secret"]
    yield live
    log = live.log()
    live.stop()
    assert "Traceback" not in log, log[-3000:]


def admin_token(server) -> str:
    form = {"grant_type": "client_credentials"}
    answer = requests.post(server.url + "/oauth/token", data=form, auth=("ops", server.admin_secret), timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def fuzz(operation, headers: dict[str, str]) -> None:
    """A bounded number of generated requests (positive and negative data) to one operation."""

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def run(case):
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


def test_admin_api_conforms_to_its_openapi(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    admin = [o for o in operations if o.path.startswith(("/admin/", "/oauth/register")) and o.label not in NOT_FUZZED]
    assert len(admin) >= 18
    # Key rotations last: an emergency one refuses the tokens signed before it.
    admin.sort(key=lambda o: o.path.startswith("/admin/keys"))
    failures = []
    for operation in admin:
        try:
            fuzz(operation, {"Authorization": f"Bearer {admin_token(server)}"})
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
