"""OpenTelemetry tracing (README "Operations"): off and never imported without OTEL_TRACES_EXPORTER; with it,
spans for each request and its steps, W3C traceparent in and out, the trace id in logs and audit lines, and
never a secret, token or assertion in a span."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode

from client_lib import AsyncTokenClient, HttpxTokenAuth
from client_lib import tracing as client_tracing
from tokendealer import tracing
from tokendealer.app import DIRECT_TOKEN_PATH, create_app
from tokendealer.fetcher import RemoteCache
from tokendealer.logs import JsonFormatter, RequestIdFilter

from .conftest import AUDIENCE, JWT_RE, basic, run_cli, server_env

TRACE_ID = "4bf92f3577b34da6a3ce929e0e4736aa"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter():
    """Tracing on in this process, every span kept in memory; off again afterwards."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    client_tracing.enable(provider)
    yield spans
    client_tracing.reset()


@pytest.fixture
def traced_app(exporter, config, clock, key_store):
    """The app built while tracing is on, so it is instrumented."""
    application = create_app(config, clock=clock)
    yield application
    application.extensions["tokendealer"].audit.close()
    application.extensions["tokendealer"].engine.dispose()


@pytest.fixture
def traced_http(traced_app):
    return traced_app.test_client()


@pytest.fixture
def secret_client(traced_app):
    client, secret = traced_app.extensions["tokendealer"].clients.create("svc", scopes=("read",), audiences=(AUDIENCE,))
    return client.client_id, secret


def test_a_traced_app_keeps_the_token_endpoint_on_wsgi(traced_app):
    """`serve`'s edge calls the token endpoint directly only when no span must see the request first."""
    assert DIRECT_TOKEN_PATH not in traced_app.extensions


def issue(http, client_id, secret, **headers):
    return http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers={**basic(client_id, secret), **headers})


def by_name(spans, name):
    found = [s for s in spans if s.name == name]
    assert found, f"no span {name!r} among {[s.name for s in spans]}"
    return found


# ---- off by default --------------------------------------------------------------------------------------

PLAIN_RUN = """
import sys
from tokendealer.app import create_app
from tokendealer.config import Config
import client_lib, client_lib.aio, client_lib.httpx_auth
from client_lib import tracing
app = create_app(Config.load())
http = app.test_client()
assert http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"}).status_code == 401
assert http.get("/healthz").status_code == 200
with tracing.span("nothing"):
    assert tracing.inject() is None
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")
print(loaded)
assert not loaded, loaded
"""


@pytest.mark.slow  # a subprocess
def test_without_otel_variables_nothing_imports_opentelemetry(tmp_path):
    env = {k: v for k, v in server_env(tmp_path).items() if not k.startswith("OTEL_")}
    assert run_cli("init", env=env).returncode == 0
    result = subprocess.run([sys.executable, "-c", PLAIN_RUN], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_exporter_names_follow_the_standard_variables():
    assert client_tracing.exporter_names({}) == []
    assert client_tracing.exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert client_tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp"}) == ["otlp_proto_http"]
    assert client_tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp_proto_http", "console"]
    grpc = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert client_tracing.exporter_names(grpc) == ["otlp_proto_grpc"]
    assert client_tracing.exporter_names({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) == []
    with pytest.raises(client_tracing.TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        client_tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.mark.slow  # a subprocess
def test_serve_refuses_an_unknown_exporter_in_one_line(tmp_path):
    env = server_env(tmp_path, OTEL_TRACES_EXPORTER="jaeger-thrift")
    assert run_cli("init", env=env).returncode == 0
    result = run_cli("serve", "--port", "1", env=env)
    assert result.returncode == 2
    assert "OTEL_TRACES_EXPORTER" in result.stderr and "Traceback" not in result.stderr


CONSOLE_RUN = """
from tokendealer.app import create_app
from tokendealer.config import Config
from opentelemetry import trace
app = create_app(Config.load())
assert app.test_client().get("/healthz").status_code == 200
trace.get_tracer_provider().shutdown()
"""


@pytest.mark.slow  # a subprocess
def test_console_exporter_from_the_environment(tmp_path):
    env = server_env(tmp_path, OTEL_TRACES_EXPORTER="console")
    assert run_cli("init", env=env).returncode == 0
    result = subprocess.run([sys.executable, "-c", CONSOLE_RUN], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    assert exported["name"] == "GET /healthz"
    assert exported["kind"] == "SpanKind.SERVER"
    assert exported["attributes"]["http.response.status_code"] == 200
    assert exported["resource"]["attributes"]["service.name"] == "tokendealer"


LIBRARY_RUN = """
from opentelemetry import trace
from client_lib import tracing
with tracing.span("fetch token", kind="client", client_id="svc"):
    pass
assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # still the application's to set
"""


def test_client_lib_follows_the_environment_without_taking_the_global_provider():
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "billing"}
    result = subprocess.run([sys.executable, "-c", LIBRARY_RUN], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    assert exported["name"] == "fetch token" and exported["attributes"] == {"oauth.client_id": "svc"}
    assert exported["resource"]["attributes"]["service.name"] == "billing"


# ---- server spans ----------------------------------------------------------------------------------------


def test_token_request_spans_continue_the_callers_trace(traced_http, secret_client, exporter):
    client_id, secret = secret_client
    exporter.clear()
    response = issue(traced_http, client_id, secret, traceparent=TRACEPARENT)
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "POST /oauth/token")
    assert server.kind == SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == PARENT_ID and server.parent.is_remote
    assert server.attributes["oauth.client_id"] == client_id
    assert server.attributes["oauth.grant_type"] == "client_credentials"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/oauth/token"
    (auth,) = by_name(spans, "client authentication")
    assert auth.parent.span_id == server.context.span_id
    assert auth.attributes["oauth.client_auth_method"] == "client_secret_basic"
    (sign,) = by_name(spans, "sign token")
    assert sign.parent.span_id == server.context.span_id
    assert sign.attributes["jwt.alg"] == "ES256" and sign.attributes["jwt.kid"]
    lookups = by_name(spans, "SELECT clients")
    assert lookups[0].parent.span_id == auth.context.span_id
    assert lookups[0].kind == SpanKind.CLIENT and lookups[0].attributes["db.system.name"] == "sqlite"


def test_always_on_sampler_traces_callers_that_ask_not_to_be(config, clock, key_store):
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    for sampler, exported in ((None, 0), (ALWAYS_ON, 1)):
        spans = InMemorySpanExporter()
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(spans))
        client_tracing.enable(provider)
        application = create_app(config, clock=clock)
        try:
            assert application.test_client().get("/healthz", headers={"traceparent": unsampled}).status_code == 200
        finally:
            client_tracing.reset()
            application.extensions["tokendealer"].audit.close()
            application.extensions["tokendealer"].engine.dispose()
        assert len(spans.get_finished_spans()) == exported


def test_refused_request_records_the_oauth_error(traced_http, secret_client, exporter):
    client_id, _ = secret_client
    exporter.clear()
    response = issue(traced_http, client_id, "wrong")
    assert response.status_code == 401
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "POST /oauth/token")
    assert server.attributes["oauth.error"] == "invalid_client"
    assert server.attributes["http.response.status_code"] == 401
    assert server.status.status_code == StatusCode.UNSET  # a 4xx is the caller's failure
    (auth,) = by_name(spans, "client authentication")
    assert auth.status.status_code == StatusCode.ERROR
    assert auth.attributes["error.type"] == "InvalidClient" and auth.attributes["oauth.error"] == "invalid_client"


def test_other_endpoints_and_revocation_checks_have_spans(traced_http, secret_client, exporter):
    client_id, secret = secret_client
    token = issue(traced_http, client_id, secret).json["access_token"]
    exporter.clear()
    assert traced_http.post("/oauth/introspect", data={"token": token}, headers=basic(client_id, secret)).json["active"] is True
    assert traced_http.get("/no/such/path").status_code == 404
    spans = exporter.get_finished_spans()
    (introspect,) = by_name(spans, "POST /oauth/introspect")
    assert introspect.attributes["oauth.client_id"] == client_id
    (validate,) = by_name(spans, "validate token")
    assert validate.parent.span_id == introspect.context.span_id
    (revocation_check,) = by_name(spans, "SELECT revoked_tokens")
    assert revocation_check.parent.span_id == validate.context.span_id
    (unknown,) = by_name(spans, "GET")  # unmatched paths do not name spans
    assert unknown.attributes["oauth.error"] == "not_found"


def test_no_secret_token_or_assertion_in_any_span(traced_http, secret_client, exporter):
    client_id, secret = secret_client
    exporter.clear()
    token = issue(traced_http, client_id, secret).json["access_token"]
    traced_http.post("/oauth/introspect", data={"token": token, "client_id": client_id, "client_secret": secret})
    traced_http.post("/verify_token", json={"access_token": token, "audience": AUDIENCE})
    traced_http.post("/oauth/revoke", data={"token": token}, headers=basic(client_id, secret))
    traced_http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret + "x"})
    assertion = token.replace(token.split(".")[1], token.split(".")[1][::-1])
    traced_http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    exported = "\n".join(span.to_json() for span in exporter.get_finished_spans())
    assert len(exporter.get_finished_spans()) > 10
    assert secret not in exported and token not in exported and assertion not in exported
    assert not JWT_RE.search(exported)


def test_token_exchange_spans_carry_neither_token(traced_app, traced_http, exporter):
    registry = traced_app.extensions["tokendealer"].clients
    _, caller_secret = registry.create("svc-a", scopes=("read",), audiences=("https://b.example",))
    _, service_secret = registry.create(
        "svc-b", scopes=("own",), audiences=(AUDIENCE,), serves=("https://b.example",), exchange_audiences=(AUDIENCE,)
    )
    subject = issue(traced_http, "svc-a", caller_secret).json["access_token"]
    exporter.clear()
    form = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS_TOKEN, "audience": AUDIENCE}
    response = traced_http.post("/oauth/token", data=form, headers=basic("svc-b", service_secret))
    assert response.status_code == 200, response.json
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "POST /oauth/token")
    assert server.attributes["oauth.grant_type"] == EXCHANGE and server.attributes["oauth.client_id"] == "svc-b"
    by_name(spans, "sign token")
    exported = "\n".join(span.to_json() for span in spans)
    assert subject not in exported and response.json["access_token"] not in exported and service_secret not in exported
    assert not JWT_RE.search(exported)


def test_trace_id_in_audit_lines_and_json_logs(traced_http, secret_client, exporter, config):
    client_id, secret = secret_client
    issue(traced_http, client_id, secret, traceparent=TRACEPARENT)
    lines = [json.loads(line) for line in Path(config.audit_log).read_text().splitlines()]
    issued = [line for line in lines if line["event"] == "token.issued"]
    assert issued[-1]["trace_id"] == TRACE_ID

    record = logging.LogRecord("tokendealer.test", logging.WARNING, __file__, 1, "inside a span", None, None)
    with tracing.span("work") as work:
        RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["trace_id"] == f"{work.get_span_context().trace_id:032x}"
    outside = logging.LogRecord("tokendealer.test", logging.WARNING, __file__, 1, "no span", None, None)
    RequestIdFilter().filter(outside)
    assert "trace_id" not in json.loads(JsonFormatter().format(outside))


# ---- outbound fetches --------------------------------------------------------------------------------------


class _Remote:
    """A loopback HTTP server answering a JWK Set and keeping the traceparent of each request."""

    def __init__(self) -> None:
        seen = self.traceparents = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append(self.headers.get("traceparent"))
                body = b'{"keys": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks?secret=q"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_outbound_fetch_is_a_child_span_and_sends_traceparent(exporter):
    remote = _Remote()
    try:
        cache = RemoteCache(validate=lambda document: document, wait=5.0)
        with tracing.span("POST /oauth/token", kind="server") as request_span:
            assert cache.get(remote.url) == {"keys": []}
    finally:
        remote.close()
    (fetch,) = by_name(exporter.get_finished_spans(), "GET")
    assert fetch.kind == SpanKind.CLIENT
    assert fetch.parent.span_id == request_span.get_span_context().span_id
    assert fetch.attributes["http.response.status_code"] == 200
    assert fetch.attributes["url.full"] == remote.url.split("?")[0]  # no query: it could hold credentials
    (sent,) = remote.traceparents
    assert sent.startswith(f"00-{fetch.context.trace_id:032x}-{fetch.context.span_id:016x}-")


# ---- client_lib with httpx, async -----------------------------------------------------------------------------


def _issuer_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    issuer = "https://issuer.example"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.startswith("/.well-known/"):
            return httpx.Response(200, json={"issuer": issuer, "token_endpoint": f"{issuer}/oauth/token", "jwks_uri": f"{issuer}/jwks"})
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "opaque-token", "token_type": "Bearer", "expires_in": 300, "scope": "read"})
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handler)


def test_async_client_and_httpx_auth_propagate_traceparent(exporter):
    seen: list[httpx.Request] = []
    transport = _issuer_transport(seen)

    async def scenario() -> None:
        client = AsyncTokenClient("https://issuer.example", "svc", "s3cret-value", http=httpx.AsyncClient(transport=transport))
        async with httpx.AsyncClient(transport=transport, auth=HttpxTokenAuth(client, audience="https://billing")) as api:
            with client_tracing.span("caller"):
                await api.get("https://issuer.example/invoices")
        await client.aclose()

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    (fetch,) = by_name(spans, "fetch token")
    (caller,) = by_name(spans, "caller")
    assert fetch.kind == SpanKind.CLIENT and fetch.parent.span_id == caller.context.span_id
    assert fetch.attributes["oauth.client_id"] == "svc" and fetch.attributes["http.response.status_code"] == 200
    parent = {request.url.path: request.headers["traceparent"].split("-")[2] for request in seen}
    assert parent["/oauth/token"] == f"{fetch.context.span_id:016x}"
    assert parent["/.well-known/oauth-authorization-server"] == f"{fetch.context.span_id:016x}"
    assert parent["/invoices"] == f"{caller.context.span_id:016x}"
    exported = "\n".join(span.to_json() for span in spans)
    assert "s3cret-value" not in exported and "opaque-token" not in exported


def test_a_traceparent_the_caller_set_is_kept(exporter):
    headers = {"traceparent": TRACEPARENT}
    with client_tracing.span("caller"):
        assert client_tracing.inject(headers)["traceparent"] == TRACEPARENT
        assert client_tracing.inject()["traceparent"] != TRACEPARENT


def test_unknown_span_attributes_are_dropped(exporter):
    with client_tracing.span("work", client_id="svc", client_secret="s3cret-value"):
        pass
    (work,) = exporter.get_finished_spans()
    assert dict(work.attributes) == {"oauth.client_id": "svc"}


def test_environment_is_read_once_and_off_by_default(monkeypatch):
    client_tracing.reset()
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    try:
        assert client_tracing.is_enabled() is False
        with client_tracing.span("nothing") as nothing:
            assert nothing is None
    finally:
        client_tracing.reset()


def test_a_tracing_warning_logged_through_the_request_id_filter_does_not_deadlock(monkeypatch):
    """Found by following the README: with the warning logged under the state lock, a log filter asking for
    the trace id (tokendealer's RequestIdFilter) waited on that lock for ever, and `serve` hung at start-up."""
    client_tracing.reset()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no-such-exporter")
    handler = logging.Handler()
    handler.emit = lambda record: None  # type: ignore[method-assign]
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("client_lib.tracing")
    logger.addHandler(handler)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (client_tracing.is_enabled(), done.set()), daemon=True)
    try:
        worker.start()
        assert done.wait(5), "configure() deadlocked on its own lock"
        assert client_tracing.is_enabled() is False
    finally:
        logger.removeHandler(handler)
        if done.is_set():  # else the lock is held for good, and reset() would hang the suite
            client_tracing.reset()
