"""Network failures told in words, through requests, httpx and the paths users see them on: client_lib's
token fetch and discovery (sync and async) and `tokendealer token`. Every remote is a loopback socket."""

from __future__ import annotations

import os
import re
import socket

import httpx
import pytest
import requests

from client_lib import AsyncTokenClient, DiscoveryError, TokenClient, TokenEndpointUnavailable
from client_lib.core.failures import network_failure

from .conftest import free_port, run_cli


def _silent(conn: socket.socket) -> None:
    conn.settimeout(5)
    try:
        while conn.recv(65536):  # reads what else comes and answers nothing, until the client gives up
            pass
    except OSError:
        pass


def _closes(conn: socket.socket) -> None:
    pass


def _not_http(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")


def _cut_short(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")


def refused() -> str:
    return f"http://127.0.0.1:{free_port()}"  # free a moment ago: nothing listens


CASES = [
    ("refused", None, "connection refused", "connection refused"),
    ("silent", _silent, "timed out", "timed out"),
    ("closes", _closes, "the connection was closed before a whole answer", "the connection was closed, or the answer was not HTTP"),
    ("not HTTP", _not_http, "not an HTTP answer", "the connection was closed, or the answer was not HTTP"),
    ("cut short", _cut_short, "the connection was closed before a whole answer", "the connection was closed, or the answer was not HTTP"),
]


@pytest.mark.parametrize(("case", "answer", "with_requests", "with_httpx"), CASES, ids=[c[0] for c in CASES])
def test_failures_of_both_libraries_are_told_in_words(remote, case, answer, with_requests, with_httpx):
    if answer is not None:
        remote.answer = answer
    url = refused() + "/x" if answer is None else remote.url
    timeout = 0.5 if answer is _silent else 5.0  # only the silent remote is waited out
    with pytest.raises(requests.RequestException) as failed:
        requests.get(url, timeout=timeout).json()
    assert network_failure(failed.value) == with_requests
    with pytest.raises(httpx.HTTPError) as failed_httpx:
        httpx.get(url, timeout=timeout).read()
    assert network_failure(failed_httpx.value) == with_httpx


def test_a_host_not_found_and_the_unforeseen():
    # The chain requests builds for a failed name look-up, raised for real (no look-up leaves the machine).
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except OSError as exc:
            raise requests.ConnectionError("Max retries exceeded") from exc
    except requests.ConnectionError as exc:
        assert network_failure(exc) == "host not found"
    # Anything else is named by its class; its text (which may quote a URL or an answer) is never used.
    assert network_failure(requests.exceptions.InvalidURL("http://user:secret@[::1/")) == "InvalidURL"
    # A chain that loops on itself still ends.
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert network_failure(first) == "ValueError"


def test_client_lib_and_the_cli_say_why_the_server_could_not_be_reached():
    url = refused()
    with pytest.raises(TokenEndpointUnavailable, match=r"^token endpoint http://127\.0\.0\.1:\d+/oauth/token failed: connection refused$"):
        TokenClient(url, "svc", "s", token_endpoint=url + "/oauth/token", retries=0).get_token()
    with pytest.raises(
        DiscoveryError, match=r"^cannot reach http://127\.0\.0\.1:\d+/\.well-known/oauth-authorization-server: connection refused$"
    ):
        TokenClient(url, "svc", "s").get_token()
    result = run_cli("token", "--client-id", "svc", "--url", url, env={**os.environ, "TOKENDEALER_CLIENT_SECRET": "s"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: token endpoint {url}/oauth/token failed: connection refused"]


@pytest.mark.anyio
async def test_the_async_client_says_why_too(remote):
    remote.answer = _silent
    client = AsyncTokenClient(remote.url, "svc", "s", token_endpoint=remote.url, retries=0, timeout=httpx.Timeout(0.5))
    with pytest.raises(TokenEndpointUnavailable, match=rf"^token endpoint {re.escape(remote.url)} failed: timed out$"):
        await client.get_token()
    await client.aclose()
    closed = refused()
    client = AsyncTokenClient(closed, "svc", "s")
    with pytest.raises(DiscoveryError, match=r"/\.well-known/oauth-authorization-server: connection refused$"):
        await client.get_token()
    await client.aclose()


@pytest.fixture
def anyio_backend():
    return "asyncio"
