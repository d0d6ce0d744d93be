"""Outbound fetches of a client's jwks_uri against hostile remotes: an overall deadline, a size
limit, no redirects, a cached failure, the last good keys kept, never a 500."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib.jose import public_jwk
from tokendealer.fetcher import FetchError, RemoteCache, get_json

from .conftest import AUDIENCE, free_port, run_cli

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def ok(body: bytes, status: str = "200 OK", extra: str = ""):
    def answer(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    return answer


def trickle(conn: socket.socket) -> None:
    """12 bytes every 2 s: each socket read succeeds, the whole answer never comes."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(15):
        conn.sendall(b"X-Slow: abc\r\n")
        time.sleep(2)


@pytest.mark.slow  # waits on the real clock
def test_overall_deadline_not_per_read(remote):
    remote.answer = trickle
    started = time.monotonic()
    with pytest.raises(FetchError, match="^did not answer within 1 s$"):
        get_json(remote.url, deadline=1.0)
    assert time.monotonic() - started < 1.8


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (ok(b"[" * 60000), "JSON"),
        (ok(b'{"keys": [' + b" " * 70000 + b"]}"), "larger"),
        (ok(b"", "302 Found", "Location: http://127.0.0.1:1/jwks\r\n"), "302"),
        (ok(b"<html>", "500 Internal Server Error"), "500"),
    ],
)
def test_hostile_answers_are_fetch_errors(remote, answer, why):
    remote.answer = answer
    with pytest.raises(FetchError, match=why):
        get_json(remote.url, deadline=2.0)


def test_failures_are_told_in_words(remote):
    remote.answer = lambda conn: None  # reads the request, closes without a word
    with pytest.raises(FetchError, match="^failed: the connection was closed before a whole answer$"):
        get_json(remote.url, deadline=2.0)
    remote.answer = lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
    with pytest.raises(FetchError, match="^failed: not an HTTP answer$"):
        get_json(remote.url, deadline=2.0)
    with pytest.raises(FetchError, match="^failed: connection refused$"):  # a port free a moment ago: nothing listens
        get_json(f"http://127.0.0.1:{free_port()}/jwks", deadline=2.0)


def jwks_of(key) -> bytes:
    return json.dumps({"keys": [public_jwk(key.public_key(), "ES256")]}).encode()


def test_failure_is_cached_with_back_off(remote):
    remote.answer = ok(b"nope", "503 Service Unavailable")
    now = [0.0]
    cache = RemoteCache(lambda v: v, backoff=5, monotonic=lambda: now[0])
    for _ in range(5):
        with pytest.raises(FetchError):
            cache.get(remote.url)
    assert remote.connections == 1
    now[0] = 5.0
    remote.answer = ok(b'{"keys": []}')
    assert cache.get(remote.url) == {"keys": []}
    assert remote.connections == 2


def test_last_good_value_kept_while_the_remote_fails(remote):
    remote.answer = ok(b'{"v": 1}')
    now = [0.0]
    cache = RemoteCache(lambda v: v, ttl=10, monotonic=lambda: now[0])
    assert cache.get(remote.url) == {"v": 1}
    remote.answer = ok(b"", "500 Internal Server Error")
    now[0] = 11.0
    assert cache.get(remote.url) == {"v": 1}  # stale: served while a refresh runs in the background
    deadline = time.monotonic() + 5
    while remote.connections < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.get(remote.url) == {"v": 1}
    assert remote.connections == 2


@pytest.mark.slow  # waits on the real clock
def test_request_waits_at_most_the_wait_bound(remote):
    remote.answer = trickle
    cache = RemoteCache(lambda v: v, wait=0.5, deadline=3.0)
    started = time.monotonic()
    with pytest.raises(FetchError):
        cache.get(remote.url)
    assert time.monotonic() - started < 1.0


# ---- through the token endpoint -------------------------------------------------------------------------


def assertion_form(key, client_id="keysvc") -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": "http://localhost:5000/oauth/token", "exp": now + 60, "jti": secrets.token_hex(8)}
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": jwt.encode(claims, key, algorithm="ES256"),
    }


@pytest.mark.parametrize("answer", [ok(b"[" * 60000), ok(b"{" * 30000), ok(b'{"keys": "x"}'), trickle])
@pytest.mark.slow  # waits on the real clock
def test_hostile_jwks_uri_is_401_never_500(http, registry, remote, answer):
    remote.answer = answer
    registry.create("keysvc", scopes=["read"], audiences=[AUDIENCE], jwks_uri=remote.url)
    key = ec.generate_private_key(ec.SECP256R1())
    started = time.monotonic()
    for _ in range(3):
        response = http.post("/oauth/token", data=assertion_form(key))
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_client"
    assert time.monotonic() - started < 2.5  # the first waits at most the wait bound; the others not at all
    assert remote.connections == 1


def test_slow_jwks_uri_does_not_stall_a_live_server(tmp_path, live_factory, remote):
    """Two concurrent requests naming a client whose jwks_uri trickles: /healthz keeps answering."""
    server = live_factory(workers=2)
    remote.answer = trickle
    created = run_cli("client", "create", "keysvc", "--scope", "read", "--audience", AUDIENCE, "--jwks-uri", remote.url, env=server.env)
    assert created.returncode == 0, created.stderr
    key = ec.generate_private_key(ec.SECP256R1())
    form = assertion_form(key)
    form["client_assertion"] = jwt.encode(
        {"iss": "keysvc", "sub": "keysvc", "aud": server.url + "/oauth/token", "exp": int(time.time()) + 60, "jti": "x"},
        key,
        algorithm="ES256",
    )
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(requests.post(server.url + "/oauth/token", data=form, timeout=30).status_code))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    assert time.monotonic() - started < 2.0
    for thread in threads:
        thread.join(30)
    assert statuses == [401, 401]
