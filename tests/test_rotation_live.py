"""Rotation on a running server with 2 workers: zero failed fetches or verifications, the new key at once."""

from __future__ import annotations

import json
import threading
import time

import jwt
import pytest
import requests

from .conftest import run_cli

pytestmark = [pytest.mark.live]

AUDIENCE = "https://api.example.com"


class CachingVerifier:
    """Verifies with a JWKS fetched at most once per its max-age and never refetched for an unknown kid,
    like a verifier that honours Cache-Control strictly: it passes only if every signing key was
    published before it signed."""

    def __init__(self, jwks_uri: str, issuer: str):
        self.jwks_uri = jwks_uri
        self.issuer = issuer
        self.keys: dict[str, jwt.PyJWK] = {}
        self.expires = 0.0
        self.lock = threading.Lock()

    def _refresh(self) -> None:
        with self.lock:
            if time.monotonic() < self.expires:
                return
            response = requests.get(self.jwks_uri, timeout=5)
            max_age = int(response.headers["Cache-Control"].split("max-age=")[1])
            self.keys = {k["kid"]: jwt.PyJWK(k) for k in response.json()["keys"]}
            self.expires = time.monotonic() + max_age

    def verify(self, token: str) -> dict:
        self._refresh()
        header = jwt.get_unverified_header(token)
        key = self.keys[header["kid"]]
        return jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=AUDIENCE, issuer=self.issuer)


def test_rotation_under_load(live_factory):
    server = live_factory(workers=2, TOKENDEALER_JWKS_MAX_AGE="2", TOKENDEALER_KEYRING_RELOAD_INTERVAL="1")
    created = run_cli("client", "create", "svc", "--scope", "read", "--audience", AUDIENCE, env=server.env)
    secret = json.loads(created.stdout)["client_secret"]
    verifier = CachingVerifier(server.url + "/.well-known/jwks.json", server.url)
    verifier._refresh()

    results: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()
    deadline = time.monotonic() + 40

    def load() -> None:
        session = requests.Session()
        for _ in range(20000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                response = session.post(
                    server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("svc", secret), timeout=5
                )
                if response.status_code != 200:
                    failures.append(f"fetch {response.status_code} {response.text[:100]}")
                    continue
                token = response.json()["access_token"]
                verifier.verify(token)
                results.append((started, jwt.get_unverified_header(token)["kid"]))
            except Exception as exc:  # every failure is counted, none may happen
                failures.append(f"{exc.__class__.__name__}: {exc}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    rotations: list[tuple[float, float, str]] = []  # (command started, command done, new active kid)
    try:
        for _ in range(3):
            time.sleep(3.5)  # more than the JWKS max-age (2 s) plus the reload interval (1 s)
            begun = time.monotonic()
            result = run_cli("keys", "rotate", "--json", env=server.env)
            assert result.returncode == 0, result.stderr
            active = next(r["kid"] for r in json.loads(result.stdout) if r["state"] == "active")
            rotations.append((begun, time.monotonic(), active))
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    assert failures == []
    assert len(results) > 200
    for i, (_, rotated_at, kid) in enumerate(rotations):
        until = rotations[i + 1][0] if i + 1 < len(rotations) else float("inf")
        window = [k for started, k in results if rotated_at <= started < until]
        assert window, f"no requests after rotation {i}"
        assert set(window) == {kid}, f"rotation {i}: an old key still signed after the rotation was done"


def test_emergency_rotation_on_live_server(live_factory):
    server = live_factory(workers=2, TOKENDEALER_KEYRING_RELOAD_INTERVAL="1")
    created = run_cli("client", "create", "svc", "--scope", "read", "--audience", AUDIENCE, env=server.env)
    secret = json.loads(created.stdout)["client_secret"]
    token = requests.post(server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=("svc", secret), timeout=5).json()[
        "access_token"
    ]
    old_kid = jwt.get_unverified_header(token)["kid"]
    assert run_cli("keys", "rotate", "--now", env=server.env).returncode == 0
    for _ in range(6):  # at once, on whichever worker each request lands
        response = requests.post(server.url + "/verify_token", json={"access_token": token, "audience": AUDIENCE}, timeout=5)
        assert response.status_code == 400
        jwks = requests.get(server.url + "/.well-known/jwks.json", timeout=5).json()
        assert old_kid not in {k["kid"] for k in jwks["keys"]}
