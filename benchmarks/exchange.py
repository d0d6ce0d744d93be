"""Token exchange (RFC 8693) next to plain client-credentials grants, in one process, same run.

    .venv/bin/python benchmarks/exchange.py [--seconds 5] [--rounds 3]

Both go through the application's WSGI entry (the token endpoint's fast path, SQLite, ES256) on one
thread, with no network in between, so the figures compare the work of the two grants: a client-credentials
grant authenticates and signs; an exchange also verifies the subject token and checks its revocation (one
query) and its client. The two take turns request by request, so load from the rest of the machine falls on
both alike; each is reported as 1 / its median request time, per round and overall, with their ratio.
Bounded: `rounds × seconds` plus a half-second warm-up.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from werkzeug.test import Client  # noqa: E402

from tokendealer.app import create_app  # noqa: E402
from tokendealer.config import Config  # noqa: E402
from tokendealer.db import make_engine, upgrade_schema  # noqa: E402
from tokendealer.keystores import FileKeyStore  # noqa: E402

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
B, C = "https://b.example", "https://c.example"


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def interleaved(calls: dict[str, Callable[[], int]], seconds: float) -> dict[str, list[float]]:
    """Each call in turn until `seconds` have passed; the duration of every call, by name. Taking turns puts
    both grants under the same load from the rest of the machine. Every answer must be 200."""
    durations: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for name, call in calls.items():
            started = time.perf_counter()
            status = call()
            durations[name].append(time.perf_counter() - started)
            if status != 200:
                raise SystemExit(f"{name}: unexpected status {status}")
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="td-bench-exchange-"))
    try:
        config = Config.load(
            environ={},
            issuer="http://127.0.0.1:5000",
            keys_dir=str(directory / "keys"),
            database_url=f"sqlite:///{directory / 'tokendealer.db'}",
            audit_log=str(directory / "audit.log"),
        )
        FileKeyStore(config.keys_dir).init("ES256")
        upgrade_schema(make_engine(config.database_url))
        app = create_app(config)
        clients = app.extensions["tokendealer"].clients
        _, a_secret = clients.create("svc-a", scopes=["read"], audiences=[B])
        _, b_secret = clients.create("svc-b", scopes=["own"], audiences=[C], serves=[B], exchange_audiences=[C])
        http = Client(app)
        a_auth, b_auth = basic("svc-a", a_secret), basic("svc-b", b_secret)

        def client_credentials() -> int:
            return http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=a_auth).status_code

        subject = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=a_auth).get_json()["access_token"]
        exchange_form = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS_TOKEN, "audience": C}

        def exchange() -> int:
            return http.post("/oauth/token", data=exchange_form, headers=b_auth).status_code

        calls = {"client_credentials": client_credentials, "token exchange": exchange}
        interleaved(calls, 0.5)  # warm-up
        medians: dict[str, list[float]] = {name: [] for name in calls}
        for round_ in range(1, args.rounds + 1):
            durations = interleaved(calls, args.seconds)
            line = []
            for name, values in durations.items():
                medians[name].append(statistics.median(values))
                line.append(f"{name} {1 / medians[name][-1]:7.0f}/s (median of {len(values)})")
            print(f"round {round_}: " + "   ".join(line), flush=True)
        plain, exchanged = (1 / statistics.median(medians[name]) for name in calls)
        print(f"overall: client_credentials {plain:7.0f}/s   token exchange {exchanged:7.0f}/s   exchange/plain = {exchanged / plain:.2f}")
        app.extensions["tokendealer"].engine.dispose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
