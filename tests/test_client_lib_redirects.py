"""client_lib never sends a token to an origin other than the one it was obtained for: TokenAuth and
HttpxTokenAuth against real loopback servers, a 302 from one origin to another, and a 401 `invalid_token` there."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import requests

from client_lib import AsyncTokenClient, HttpxTokenAuth, TokenAuth, TokenClient

from .conftest import BILLING

REFUSED = (401, {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="the token has expired"'})


class Origin:
    """A loopback HTTP server that records the Authorization header of every request and answers each path
    as `routes` says: (status, headers), or a list of them to give in turn; any other path gets a 401 `invalid_token`."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.seen: list[tuple[str, str | None]] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                origin.seen.append((self.path, self.headers.get("Authorization")))
                route = origin.routes.get(self.path, REFUSED)
                status, headers = (route.pop(0) if len(route) > 1 else route[0]) if isinstance(route, list) else route
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def tokens(self) -> list[str]:
        return [authorization for _, authorization in self.seen if authorization]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origins():
    """Two origins: `a` redirects /start to `b`'s /land, which refuses every token."""
    a, b = Origin(), Origin()
    a.routes["/start"] = (302, {"Location": f"{b.url}/land"})
    a.routes["/inside"] = (302, {"Location": "/ok"})
    a.routes["/ok"] = (200, {})
    yield a, b
    a.close()
    b.close()


def token_client(stack) -> TokenClient:
    return TokenClient(stack["issuer"], "caller", stack["secrets"]["caller"], sleep=lambda _s: None)


def async_token_client(stack) -> AsyncTokenClient:
    async def no_sleep(_seconds: float) -> None:
        return None

    return AsyncTokenClient(stack["issuer"], "caller", stack["secrets"]["caller"], sleep=no_sleep)


# ---- default ports: http://127.0.0.1 and https://127.0.0.1 routed to loopback ports, as DNS and a listener on 80/443 would


class RoutedAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter that delivers a default-port URL to a loopback port; the session sees the URL it asked for."""

    def __init__(self, port: int):
        super().__init__()
        self.port = port

    def send(self, request, **kwargs):
        routed = request.copy()
        parts = urlsplit(request.url)
        routed.url = urlunsplit(("http", f"127.0.0.1:{self.port}", parts.path, parts.query, ""))
        response = super().send(routed, **kwargs)
        response.request, response.url = request, request.url
        return response


class RoutedTransport(httpx.HTTPTransport):
    """The httpx twin of RoutedAdapter."""

    def __init__(self, port: int):
        super().__init__()
        self.port = port

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url.copy_with(scheme="http", port=self.port)
        return super().handle_request(httpx.Request(request.method, url, headers=request.headers, stream=request.stream))


@pytest.fixture
def upgrade(origins):
    """`a` as http://127.0.0.1 (port 80) redirecting /start to `b` as https://127.0.0.1/land (port 443): the same host."""
    a, b = origins
    a.routes["/start"] = (302, {"Location": "https://127.0.0.1/land"})
    a.routes["/refuse-then-move"] = [REFUSED, (302, {"Location": "https://127.0.0.1/land"})]
    return a, b


def upgrade_session(a: Origin, b: Origin) -> requests.Session:
    session = requests.Session()
    session.mount("http://127.0.0.1/", RoutedAdapter(a.port))
    session.mount("https://127.0.0.1/", RoutedAdapter(b.port))
    return session


# ---- requests ------------------------------------------------------------------------------------------


def test_token_auth_sends_no_token_across_a_redirect_or_its_401(stack, proxy, origins):
    a, b = origins
    response = requests.get(f"{a.url}/start", auth=TokenAuth(token_client(stack), audience=BILLING), timeout=5)
    assert response.status_code == 401 and [r.status_code for r in response.history] == [302]
    assert b.tokens() == []
    assert len(a.tokens()) == 1
    assert proxy.count("/oauth/token") == 1  # b's refusal did not make us drop a's token


def test_token_auth_strips_its_token_on_an_http_to_https_redirect_to_the_same_host(stack, upgrade):
    """requests itself keeps Authorization from http://host to https://host (Session.should_strip_auth)."""
    a, b = upgrade
    with upgrade_session(a, b) as session:
        response = session.get("http://127.0.0.1/start", auth=TokenAuth(token_client(stack), audience=BILLING), timeout=5)
    assert response.status_code == 401 and response.url == "https://127.0.0.1/land"
    assert b.seen and b.tokens() == []
    assert len(a.tokens()) == 1


def test_token_auth_strips_its_new_token_when_the_retry_is_redirected_away(stack, proxy, upgrade):
    """a refuses the first token, then answers the retry with a redirect to https://: b still gets no token."""
    a, b = upgrade
    with upgrade_session(a, b) as session:
        response = session.get("http://127.0.0.1/refuse-then-move", auth=TokenAuth(token_client(stack), audience=BILLING), timeout=5)
    assert response.status_code == 401 and response.url == "https://127.0.0.1/land"
    assert b.seen and b.tokens() == []
    assert len(set(a.tokens())) == 2 and proxy.count("/oauth/token") == 2


def test_token_auth_keeps_its_token_on_a_same_origin_redirect(stack, origins):
    a, _ = origins
    response = requests.get(f"{a.url}/inside", auth=TokenAuth(token_client(stack), audience=BILLING), timeout=5)
    assert response.status_code == 200
    assert [path for path, _ in a.seen] == ["/inside", "/ok"] and len(set(a.tokens())) == 1 and len(a.tokens()) == 2


def test_token_auth_is_pinned_to_its_first_origin(stack, origins):
    a, b = origins
    with requests.Session() as session:
        session.auth = TokenAuth(token_client(stack), audience=BILLING)
        assert session.get(f"{a.url}/ok", timeout=5).status_code == 200
        assert session.get(f"{b.url}/land", timeout=5).status_code == 401
    assert len(a.tokens()) == 1 and b.seen and b.tokens() == []


def test_token_auth_with_an_explicit_origin(stack, origins):
    a, b = origins
    auth = TokenAuth(token_client(stack), audience=BILLING, origin=f"{a.url}/any/path")
    assert requests.get(f"{b.url}/land", auth=auth, timeout=5).status_code == 401
    assert requests.get(f"{a.url}/ok", auth=auth, timeout=5).status_code == 200
    assert b.tokens() == [] and len(a.tokens()) == 1
    with pytest.raises(ValueError):
        TokenAuth(token_client(stack), audience=BILLING, origin="billing.internal")


# ---- httpx -----------------------------------------------------------------------------------------------


def test_httpx_auth_sends_no_token_across_a_redirect_or_its_401(stack, proxy, origins):
    a, b = origins
    auth = HttpxTokenAuth(token_client(stack), audience=BILLING)
    with httpx.Client(auth=auth, follow_redirects=True) as http:
        response = http.get(f"{a.url}/start")
    assert b.tokens() == []
    assert len(a.tokens()) == 1  # b's refusal did not make us drop a's token and ask a again
    assert proxy.count("/oauth/token") == 1
    assert response.status_code == 401 and [r.status_code for r in response.history] == [302]


@pytest.mark.anyio
async def test_async_httpx_auth_sends_no_token_across_a_redirect_or_its_401(stack, proxy, origins, anyio_backend):
    a, b = origins
    client = async_token_client(stack)
    async with httpx.AsyncClient(auth=HttpxTokenAuth(client, audience=BILLING), follow_redirects=True) as http:
        response = await http.get(f"{a.url}/start")
        assert b.tokens() == []
        assert len(a.tokens()) == 1
        assert proxy.count("/oauth/token") == 1
        assert response.status_code == 401 and [r.status_code for r in response.history] == [302]
        assert (await http.get(f"{b.url}/land")).status_code == 401  # pinned to a's origin by the first request
    await client.aclose()
    assert b.tokens() == []


def test_httpx_auth_is_pinned_to_its_first_origin(stack, origins):
    a, b = origins
    with httpx.Client(auth=HttpxTokenAuth(token_client(stack), audience=BILLING)) as http:
        assert http.get(f"{a.url}/ok").status_code == 200
        assert http.get(f"{b.url}/land").status_code == 401
    assert len(a.tokens()) == 1 and b.seen and b.tokens() == []


def test_httpx_auth_with_an_explicit_origin(stack, origins):
    a, b = origins
    with httpx.Client(auth=HttpxTokenAuth(token_client(stack), audience=BILLING, origin=a.url)) as http:
        assert http.get(f"{b.url}/land").status_code == 401
        assert http.get(f"{a.url}/ok").status_code == 200
    assert b.tokens() == [] and len(a.tokens()) == 1


@pytest.mark.xfail(
    strict=True,
    reason="httpx keeps Authorization on an http->https redirect to the same host (Client._redirect_headers), "
    "and an httpx.Auth never sees the redirect it follows: use https:// URLs with HttpxTokenAuth",
)
def test_httpx_auth_token_on_an_http_to_https_redirect_to_the_same_host(stack, upgrade):
    a, b = upgrade
    mounts = {"http://127.0.0.1": RoutedTransport(a.port), "https://127.0.0.1": RoutedTransport(b.port)}
    with httpx.Client(auth=HttpxTokenAuth(token_client(stack), audience=BILLING), follow_redirects=True, mounts=mounts) as http:
        response = http.get("http://127.0.0.1/start")
    assert response.status_code == 401 and str(response.url) == "https://127.0.0.1/land"
    assert b.seen and b.tokens() == []


@pytest.fixture
def anyio_backend():
    return "asyncio"
