"""One trace across two processes: a client_lib caller here (spans kept in memory) and `tokendealer serve`
exporting OTLP/HTTP to a loopback collector this test runs, which decodes what the server sends."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from client_lib import TokenAuth, TokenClient, TokenRequestError, TokenVerifier
from client_lib import tracing as client_tracing

from .conftest import JWT_RE, free_port, run_cli

BILLING = "https://billing"


class Collector:
    """An OTLP/HTTP trace receiver on loopback: every span it is sent, decoded from protobuf."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.raw: list[bytes] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.receive(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def receive(self, path: str, body: bytes) -> None:
        assert path == "/v1/traces"
        self.raw.append(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "service": resource.get("service.name"),
                            "scope": scope_spans.scope.name,
                        }
                    )

    def wait_for(self, predicate, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [span for span in list(self.spans) if predicate(span)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no such span arrived; received: {[(s['name'], s['trace_id']) for s in self.spans]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class ResourceServer:
    """A loopback service that records the trace context of each request it gets."""

    def __init__(self) -> None:
        self.traceparents: list[str | None] = []
        seen = self.traceparents

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append(self.headers.get("traceparent"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def wait_for_audit(path: Path, event: str, timeout: float = 10.0) -> list[dict]:
    """The audit lines of `event`, once written (`serve` may batch its audit writes)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in map(json.loads, path.read_text().splitlines()) if line["event"] == event]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def collector():
    receiver = Collector()
    yield receiver
    receiver.close()


@pytest.fixture
def caller_spans():
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    client_tracing.enable(provider)
    yield spans
    client_tracing.reset()


def test_one_trace_spans_the_caller_and_the_server(live_factory, collector, caller_spans):
    server = live_factory(
        workers=2,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_BSP_SCHEDULE_DELAY="50",
        TOKENDEALER_LOG_JSON="true",
    )
    created = run_cli("client", "create", "caller", "--scope", "invoices:read", "--audience", BILLING, "--json", env=server.env)
    secret = json.loads(created.stdout)["client_secret"]

    client = TokenClient(server.url, "caller", secret)
    token = client.get_token(audience=BILLING)
    claims = TokenVerifier(server.url, BILLING).verify(token, scopes=["invoices:read"])
    assert claims["client_id"] == "caller"

    spans = caller_spans.get_finished_spans()
    (fetch,) = [s for s in spans if s.name == "fetch token"]
    (verify,) = [s for s in spans if s.name == "verify token"]
    (jwks,) = [s for s in spans if s.name == "fetch JWKS"]
    assert jwks.parent.span_id == verify.context.span_id
    fetch_trace, fetch_id = f"{fetch.context.trace_id:032x}", f"{fetch.context.span_id:016x}"

    (token_span,) = collector.wait_for(lambda s: s["name"] == "POST /oauth/token" and s["trace_id"] == fetch_trace)
    assert token_span["parent_span_id"] == fetch_id
    assert token_span["service"] == "tokendealer" and token_span["scope"] == "tokendealer"
    assert token_span["attributes"]["oauth.client_id"] == "caller"
    assert token_span["attributes"]["oauth.grant_type"] == "client_credentials"
    assert token_span["attributes"]["http.response.status_code"] == 200
    # Discovery went out inside the same client span.
    (discovery,) = collector.wait_for(lambda s: s["name"].startswith("GET /.well-known/oauth") and s["trace_id"] == fetch_trace)
    assert discovery["parent_span_id"] == fetch_id
    # The server's own steps are children of its request span, in the same trace.
    children = collector.wait_for(lambda s: s["parent_span_id"] == token_span["span_id"] and s["name"] == "sign token")
    assert children[0]["trace_id"] == fetch_trace

    (jwks_span,) = collector.wait_for(lambda s: s["name"] == "GET /.well-known/jwks.json")
    assert jwks_span["trace_id"] == f"{jwks.context.trace_id:032x}"
    assert jwks_span["parent_span_id"] == f"{jwks.context.span_id:016x}"

    (issued,) = wait_for_audit(Path(server.env["TOKENDEALER_AUDIT_LOG"]), "token.issued")
    assert issued["trace_id"] == fetch_trace

    # A request whose outbound fetch fails: the fetch's span and the warning it logs carry the request's trace.
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    keyed = ("client", "create", "keyed", "--scope", "invoices:read", "--audience", BILLING, "--jwks-uri", dead)
    assert run_cli(*keyed, env=server.env).returncode == 0
    with pytest.raises(TokenRequestError):
        TokenClient(server.url, "keyed", private_key=ec.generate_private_key(ec.SECP256R1())).get_token(audience=BILLING)
    (refused,) = [s for s in caller_spans.get_finished_spans() if s.name == "fetch token" and s.attributes["oauth.client_id"] == "keyed"]
    assert refused.attributes["oauth.error"] == "invalid_client"
    refused_trace = f"{refused.context.trace_id:032x}"
    (request_span,) = collector.wait_for(lambda s: s["name"] == "POST /oauth/token" and s["trace_id"] == refused_trace)
    assert request_span["attributes"]["oauth.error"] == "invalid_client"
    assert request_span["attributes"]["oauth.client_auth_method"] == "private_key_jwt"
    (outbound,) = collector.wait_for(lambda s: s["name"] == "GET" and s["trace_id"] == refused_trace)
    assert outbound["attributes"]["error.type"] == "FetchError" and outbound["attributes"]["url.full"] == dead
    (authentication,) = collector.wait_for(lambda s: s["span_id"] == outbound["parent_span_id"])
    assert authentication["name"] == "client authentication" and authentication["parent_span_id"] == request_span["span_id"]
    deadline = time.monotonic() + 10
    while not [line for line in json_lines(server.log()) if line.get("trace_id") == refused_trace]:
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.05)
    (warning,) = [line for line in json_lines(server.log()) if line.get("trace_id") == refused_trace]
    assert warning["logger"] == "tokendealer.fetcher" and "failed" in warning["message"]

    resource = ResourceServer()
    try:
        with client_tracing.span("caller work") as work:
            assert requests.get(resource.url, auth=TokenAuth(client, audience=BILLING), timeout=5).status_code == 200
    finally:
        resource.close()
    (sent,) = resource.traceparents
    assert sent.split("-")[1:3] == [f"{work.get_span_context().trace_id:032x}", f"{work.get_span_context().span_id:016x}"]

    exported = b"".join(collector.raw).decode("latin-1")
    assert secret not in exported and token not in exported and not JWT_RE.search(exported)
