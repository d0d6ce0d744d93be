"""schemathesis against a live server from its own /openapi.json: no 5xx, no response outside the document."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import LiveServer, free_port, run_cli, server_env

pytestmark = [pytest.mark.slow]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = server_env(tmp, TOKENDEALER_ISSUER=f"http://127.0.0.1:{port}")
    assert run_cli("init", env=env).returncode == 0
    assert run_cli("client", "create", "svc", "--scope", "read", "--audience", "https://api.example.com", env=env).returncode == 0
    server = LiveServer(env, workers=2, port=port).start()
    yield schemathesis.openapi.from_url(server.url + "/openapi.json")
    log = server.log()
    server.stop()
    assert "Traceback" not in log, log[-3000:]
    assert log.count('"POST ') >= 100  # the generated requests really reached the server


def test_api_conforms_to_its_openapi(api_schema):
    """Every operation, a bounded number of generated requests each (positive and negative data)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {o.label for o in operations}
    assert {
        "POST /oauth/token",
        "POST /oauth/introspect",
        "POST /oauth/revoke",
        "POST /verify_token",
        "GET /.well-known/jwks.json",
    } <= labels
    failures = []
    # The admin API and registration are fuzzed with tokens by test_admin_openapi_fuzz.py.
    for operation in [o for o in operations if not o.path.startswith(("/admin/", "/oauth/register"))]:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def run(case):
            case.call_and_validate(checks=CHECKS)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
