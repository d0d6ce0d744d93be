"""The edge of `tokendealer serve` in process, on a stand-in for granian's RSGI objects: the body deadline kept
by the reaper, the token endpoint called directly with the request's headers, and the proxy headers judged
the same way on the direct path as on the WSGI one."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokendealer.app import DIRECT_TOKEN_PATH, create_app
from tokendealer.edge import REAP_INTERVAL, Edge
from tokendealer.errors import InvalidRequest
from tokendealer.http import MAX_PARAM_LENGTH, MAX_PARAMS, parse_form
from tokendealer.jsontext import compact, dumps
from tokendealer.logs import AccessLog, LineBuffer

from .certificates import issue, make_ca, name
from .conftest import AUDIENCE, FakeClock, basic, initialise, make_config

FORM = "application/x-www-form-urlencoded"
PROXY = "10.0.0.7"
CERT_HEADER = "X-SSL-Client-Cert"


class Headers:
    """granian's RSGIHeaders: lower-case names, `get` gives the first value, `items` every pair."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = [(name.lower(), value) for name, value in pairs]

    def get(self, name: str, default: Any = None) -> Any:
        return next((value for key, value in self.pairs if key == name), default)

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def __contains__(self, name: str) -> bool:
        return any(key == name for key, _ in self.pairs)


class Scope:
    proto = "http"
    query_string = ""
    authority = None
    scheme = "http"
    http_version = "1.1"

    def __init__(self, method: str, path: str, headers: list[tuple[str, str]], client: str = "127.0.0.1:50000"):
        self.method, self.path, self.client = method, path, client
        self.headers = Headers(headers)


class Protocol:
    """The request body (None: it never arrives) and the answer given."""

    def __init__(self, body: bytes | None):
        self.body = body
        self.answer: tuple[int, list[tuple[str, str]], bytes] | None = None

    def __call__(self) -> asyncio.Future[bytes]:
        future = asyncio.get_running_loop().create_future()
        if self.body is not None:
            future.set_result(self.body)
        return future

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answer = (status, headers, body)

    def __aiter__(self) -> Protocol:
        self.chunks = [self.body] if self.body else []
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


@pytest.fixture
def served(tmp_path):
    """An app as `serve`'s workers build it (direct token path), behind a proxy at PROXY; its registry."""
    config = make_config(tmp_path, trusted_proxies=f"{PROXY}", client_cert_header=CERT_HEADER)
    clock = FakeClock(time.time())
    initialise(config, clock)
    app = create_app(config, clock=clock)
    yield app, app.extensions["tokendealer"].clients
    app.extensions["tokendealer"].audit.close()
    app.extensions["tokendealer"].engine.dispose()


def make_edge(app: Any, tmp_path, body_timeout: float = 5.0) -> Edge:
    log = open(tmp_path / "access.log", "ab")  # noqa: SIM115 (closed with the test's temporary folder)
    return Edge(app, AccessLog(LineBuffer(log.fileno())), body_timeout, 65536, token_path=app.extensions.get(DIRECT_TOKEN_PATH))


def run(edge: Edge, scope: Scope, protocol: Protocol) -> tuple[int, dict[str, str], Any]:
    async def main() -> None:
        edge.__rsgi_init__(asyncio.get_running_loop())
        await edge.__rsgi__(scope, protocol)

    asyncio.run(main())
    assert protocol.answer is not None
    status, headers, body = protocol.answer
    return status, {k.lower(): v for k, v in headers}, json.loads(body)


def token_request(client_id: str, secret: str, extra: list[tuple[str, str]] = (), **scope: Any) -> tuple[Scope, Protocol]:
    body = f"grant_type=client_credentials&audience={AUDIENCE}".encode()
    headers = [("Content-Type", FORM), ("Content-Length", str(len(body))), *basic(client_id, secret).items(), *extra]
    return Scope("POST", "/oauth/token", headers, **scope), Protocol(body)


def test_serve_calls_the_token_endpoint_directly(served, tmp_path):
    app, registry = served
    client, secret = registry.create("svc", scopes=["read"], audiences=[AUDIENCE])
    edge = make_edge(app, tmp_path)
    assert edge.token_path is not None
    status, headers, body = run(edge, *token_request(client.client_id, secret))
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["access_token"].count(".") == 2
    assert headers["cache-control"] == "no-store" and headers["pragma"] == "no-cache"
    assert headers["content-length"] == str(len(json.dumps(body, separators=(",", ":"))))
    assert len(headers["x-request-id"]) == 32


def test_a_wrong_secret_is_refused_on_the_direct_path(served, tmp_path):
    app, registry = served
    client, _ = registry.create("svc", scopes=["read"], audiences=[AUDIENCE])
    status, headers, body = run(make_edge(app, tmp_path), *token_request(client.client_id, "wrong"))
    assert status == 401 and body["error"] == "invalid_client"
    assert headers["www-authenticate"].startswith("Basic")


def test_request_rate_limits_keep_the_token_endpoint_on_flask(tmp_path):
    config = make_config(tmp_path, ratelimit="1000/second")
    initialise(config)
    app = create_app(config)
    try:
        assert DIRECT_TOKEN_PATH not in app.extensions
    finally:
        app.extensions["tokendealer"].audit.close()


def test_only_the_public_listener_without_limits_or_spans_calls_the_token_endpoint_directly(tmp_path):
    """The admin listener answers 404 to /oauth/token through its gate, so it never gets the direct path."""
    config = make_config(tmp_path, admin_listen="127.0.0.1:47999")
    initialise(config)
    apps = {listener: create_app(config, listener=listener) for listener in ("public", "admin")}
    try:
        assert DIRECT_TOKEN_PATH in apps["public"].extensions and DIRECT_TOKEN_PATH not in apps["admin"].extensions
    finally:
        for app in apps.values():
            app.extensions["tokendealer"].audit.close()


def test_a_body_that_never_arrives_is_answered_408_within_the_deadline(served, tmp_path):
    app, _ = served
    edge = make_edge(app, tmp_path, body_timeout=0.6)
    scope = Scope("POST", "/oauth/token", [("Content-Type", FORM), ("Content-Length", "100")])
    started = time.monotonic()
    status, headers, body = run(edge, scope, Protocol(None))
    elapsed = time.monotonic() - started
    assert status == 408 and headers["connection"] == "close" and body["error"] == "invalid_request"
    # The reaper cancels a read in the round before its deadline: at most one round earlier, and (allowing for a
    # loaded machine's stalls) not rounds later.
    assert 0.6 - REAP_INTERVAL - 0.05 <= elapsed <= 0.6 + 2 * REAP_INTERVAL
    assert not edge.reading and not edge.expired


class LateProtocol(Protocol):
    """A body that arrives `delay` seconds after it is asked for."""

    def __init__(self, body: bytes, delay: float):
        super().__init__(body)
        self.delay = delay

    def __call__(self) -> asyncio.Future[bytes]:
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(self.delay, future.set_result, self.body)
        return future


def test_a_deadline_shorter_than_a_reapers_round_still_gives_the_body_its_time(served, tmp_path):
    """TOKENDEALER_BODY_TIMEOUT may be below REAP_INTERVAL: a round that comes just after a read began does not
    cancel it (its deadline falls before the next round of REAP_INTERVAL, not before its own), so a body that
    arrives well within the deadline is answered, not 408."""
    app, registry = served
    client, secret = registry.create("svc", scopes=["read"], audiences=[AUDIENCE])
    edge = make_edge(app, tmp_path, body_timeout=REAP_INTERVAL * 0.8)
    scope, on_time = token_request(client.client_id, secret)
    protocol = LateProtocol(on_time.body or b"", delay=edge.body_timeout / 4)

    async def main() -> None:
        edge.loop = asyncio.get_running_loop()
        task = asyncio.create_task(edge.__rsgi__(scope, protocol))
        await asyncio.sleep(0)  # the read has begun
        edge.reap()  # and a round comes at once
        await task

    asyncio.run(main())
    assert protocol.answer is not None and protocol.answer[0] == 200, protocol.answer
    assert not edge.reading and not edge.expired


def test_a_cancellation_that_is_not_the_deadline_is_not_answered(served, tmp_path):
    """granian cancels a request whose client went away: that is not turned into a 408."""
    app, _ = served
    edge = make_edge(app, tmp_path, body_timeout=30)
    scope = Scope("POST", "/oauth/token", [("Content-Type", FORM), ("Content-Length", "100")])
    protocol = Protocol(None)

    async def main() -> None:
        edge.__rsgi_init__(asyncio.get_running_loop())
        task = asyncio.create_task(edge.__rsgi__(scope, protocol))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert protocol.answer is None and not edge.reading


def test_header_names_with_underscores_are_dropped_and_repeats_joined():
    scope = Scope("GET", "/", [("X_SSL_Client_Cert", "forged"), ("DPoP", "a"), ("dpop", "b"), ("Accept", "*/*")])
    assert Edge.headers(scope) == {"dpop": "a,b", "accept": "*/*"}


def test_two_dpop_headers_are_refused_on_the_direct_path(served, tmp_path):
    """RFC 9449 §4.3 check 1: at most one DPoP header, whichever path the request takes."""
    app, registry = served
    client, secret = registry.create("svc", scopes=["read"], audiences=[AUDIENCE])
    scope, protocol = token_request(client.client_id, secret, [("DPoP", "x.y.z"), ("DPoP", "x.y.z")])
    status, _, body = run(make_edge(app, tmp_path), scope, protocol)
    assert status == 400 and body["error"] == "invalid_dpop_proof"


@pytest.mark.parametrize(
    ("peer", "forwarded"),
    [
        ("127.0.0.1", None),
        ("127.0.0.1", "203.0.113.9"),
        (PROXY, None),
        (PROXY, "203.0.113.9"),
        (PROXY, "198.51.100.1, 203.0.113.9"),
        (PROXY, ""),
        (PROXY, " , "),
        (PROXY, '""'),  # a quoted empty hop: ProxyFix keeps the peer, it is not an address
        (PROXY, '198.51.100.1, ""'),
        ("192.0.2.1", "203.0.113.9"),
        ("192.0.2.1", '""'),
    ],
)
@pytest.mark.parametrize("hops", [None, "1", "2"])
def test_the_direct_path_takes_the_client_address_as_the_wsgi_path_does(tmp_path, peer, forwarded, hops):
    """`ProxyHeaders.resolve` (the edge's headers) and `ProxyHeaders` as WSGI middleware (werkzeug's ProxyFix)
    give the same client address for every combination of peer, hop count and X-Forwarded-For."""
    trusted = hops or PROXY
    config = make_config(tmp_path, trusted_proxies=trusted)
    initialise(config)
    app = create_app(config)
    try:
        proxy = app.extensions[DIRECT_TOKEN_PATH].proxy
        seen: dict[str, Any] = {}

        def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            seen["address"] = environ["REMOTE_ADDR"]
            return []

        wsgi = type(proxy)(inner, proxy.hops, proxy.networks, None)
        environ = {"REMOTE_ADDR": peer, "wsgi.url_scheme": "http", "HTTP_HOST": "localhost"}
        headers = {}
        if forwarded is not None:
            environ["HTTP_X_FORWARDED_FOR"] = headers["x-forwarded-for"] = forwarded
        wsgi(environ, lambda *a: None)
        assert proxy.resolve(peer, headers) == seen["address"]
    finally:
        app.extensions["tokendealer"].audit.close()


def test_the_certificate_header_counts_only_from_the_listed_proxy(served, tmp_path):
    """From the proxy, the certificate authenticates a tls_client_auth client; from anyone else it is ignored,
    and a `Client-Cert` header the proxy did not set never counts."""
    app, registry = served
    ca = make_ca()
    cert = issue(ca, name(O="Example", CN="billing"))
    client, _ = registry.create("mtls", scopes=["read"], audiences=[AUDIENCE], tls_subject="CN=billing,O=Example")
    body = f"grant_type=client_credentials&client_id={client.client_id}".encode()
    edge = make_edge(app, tmp_path)

    def ask(peer: str, header: str) -> tuple[int, dict[str, Any]]:
        headers = [("Content-Type", FORM), ("Content-Length", str(len(body))), (header, cert.rfc9440())]
        status, _, answer = run(edge, Scope("POST", "/oauth/token", headers, client=f"{peer}:4000"), Protocol(body))
        return status, answer

    status, answer = ask(PROXY, CERT_HEADER)
    assert status == 200, answer
    assert ask("127.0.0.1", CERT_HEADER)[0] == 401
    assert ask(PROXY, "Client-Cert")[0] == 401


# ---- the hot path's own parsers and writers, against the standard library's --------------------------------


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="ab=&+%2Fé;\x00 ", max_size=24))
def test_parse_form_reads_a_body_as_parse_qs_does(text):
    assert parse_form(FORM, text.encode()) == parse_qs(text, keep_blank_values=True)


def test_parse_form_keeps_its_bounds():
    with pytest.raises(InvalidRequest, match="too many parameters"):
        parse_form(FORM, b"&".join([b"a=1"] * (MAX_PARAMS + 1)))
    with pytest.raises(InvalidRequest, match="too long"):
        parse_form(FORM, b"a=" + b"%41" * (MAX_PARAM_LENGTH + 1))
    with pytest.raises(InvalidRequest, match="must be"):
        parse_form("application/json", b"a=1")


def test_parse_form_remembers_no_long_quoted_names():
    """Only short quoted text is remembered: 512 bodies each one long quoted name (refused as too long, read
    by no one) would otherwise hold ~80 MB per worker until other names push them out."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(600):
            with pytest.raises(InvalidRequest, match="too long"):
                parse_form(FORM, b"%%%02x" % (i % 256) + b"+" * 60000 + str(i).encode() + b"=x")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4_000_000, f"{held / 1e6:.0f} MB held by refused names"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500)
@given(JSON_VALUES)
def test_compact_json_is_the_standard_encoders(value):
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert compact(ensure_ascii=True, default=str)(value) == json.dumps(value, separators=(",", ":"), default=str)


def test_compact_json_refuses_what_json_cannot_hold_unless_told():
    with pytest.raises(TypeError):
        dumps({"a": object()})
    assert compact(ensure_ascii=True, default=str)({"a": b"x"}) == '{"a":"b\'x\'"}'


def test_an_http2_body_without_a_length_is_read(served, tmp_path):
    """HTTP/2 frames a body whatever its headers say: one sent without Content-Length is read, not taken as empty."""
    app, registry = served
    client, secret = registry.create("svc", scopes=["read"], audiences=[AUDIENCE])
    scope, protocol = token_request(client.client_id, secret)
    scope.headers.pairs = [(name, value) for name, value in scope.headers.pairs if name != "content-length"]
    scope.http_version = "2"
    status, _, body = run(make_edge(app, tmp_path), scope, protocol)
    assert status == 200, body
