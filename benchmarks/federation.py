"""Federated token requests per second next to secret-authenticated ones, in the same run.

    .venv/bin/python benchmarks/federation.py [--seconds 3] [--rounds 5]
    .venv/bin/python benchmarks/federation.py --serve [--seconds 3] [--rounds 3] [--connections 64] [--max-tokens 24000] [--checkout DIR]

With `--serve`: a real `tokendealer serve` (2 workers, SQLite, ES256) on loopback, the same three kinds of
request from wrk (`--connections`, 2 threads, `bodies.lua`, which sends the next body of a file with each
request), rounds alternating the order of the kinds; each round's `--max-tokens` new tokens are signed
before it starts (by one process per core), and wrk reports any sent a second time (the file ran out: then lower
--seconds). Prints req/s, p99 and the server's CPU per request (all its processes) per round, the medians and their
ratios to secret, and the median of each round's own ratio to the secret run beside it (the machine's drift
between rounds cancels out of those). `--checkout DIR` serves another checkout's code (a git worktree of an older
commit), started in that folder with PYTHONPATH pointing at it: run it and the plain command in turns for before
and after.

Without it:
In-process: the server's WSGI application (the token endpoint's own fast path) is called in a loop, with no
network, so the numbers compare the work of the ways in. Three kinds of request:
- secret: client_secret_basic;
- federated, re-used token: an RS256 Kubernetes-shaped projected token presented again and again, as a pod
  does until the kubelet refreshes it (its signature is checked once a minute);
- federated, new token: a different token each time (as GitHub Actions or per-call JWT-SVIDs), so every
  request parses and verifies one (pre-signed, 600 per round: the bound of that kind).
Each token is matched against a rule with a subject and a `kubernetes.io.namespace` condition.

Batches of 25 requests alternate between the kinds, so drift on a loaded machine hits all alike, and each
kind's rate is counted in the CPU time of this process (what the requests cost the server, whatever else the
machine runs) and in wall-clock time. Each round is bounded by --seconds. Prints the rates per round and the
ratios of the medians to secret (target: federated >= 0.7x).
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import BIN, HERE, SCOPE, Server, Setup, basic_header, checkout_env, free_port, wrk  # noqa: E402
from client_lib.jose import public_jwk  # noqa: E402
from tokendealer.app import create_app  # noqa: E402
from tokendealer.config import Config  # noqa: E402
from tokendealer.db import make_engine, upgrade_schema  # noqa: E402
from tokendealer.federation import RuleStore  # noqa: E402
from tokendealer.issuers import IssuerStore  # noqa: E402
from tokendealer.keystores import FileKeyStore  # noqa: E402

ISSUER = "http://127.0.0.1:5000"
CLUSTER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "https://billing"
BATCH = 25
FRESH_PER_ROUND = 600


def build(tmp: Path, fresh: int) -> tuple[Any, dict[str, bytes | str], dict[str, bytes | str], list[dict[str, bytes | str]]]:
    """The app; the environ parts of a secret request, of a federated one, and of `fresh` federated ones
    each with its own token."""
    config = Config.load(
        environ={},
        issuer=ISSUER,
        keys_dir=str(tmp / "keys"),
        database_url=f"sqlite:///{tmp / 'td.db'}",
        audit_log=str(tmp / "audit.log"),
        auth_failure_limit="1000000/minute",
    )
    FileKeyStore(config.keys_dir).init("ES256")
    upgrade_schema(make_engine(config.database_url))
    app = create_app(config)
    services = app.extensions["tokendealer"]
    _, secret = services.clients.create("secret-svc", scopes=["read"], audiences=[AUDIENCE])
    services.clients.create("billing", scopes=["read"], audiences=[AUDIENCE], no_secret=True)
    key = rsa.generate_private_key(65537, 2048)
    jwk = public_jwk(key.public_key(), "RS256")
    issuers = IssuerStore(services.engine)
    issuers.add(CLUSTER, jwks={"keys": [jwk]})
    rules = RuleStore(services.engine)
    rules.add(services.clients, issuers, "billing", CLUSTER, "system:serviceaccount:prod:billing", ISSUER, ["kubernetes.io.namespace=prod"])
    basic = base64.b64encode(f"secret-svc:{secret}".encode()).decode()
    secret_request = {"body": urlencode({"grant_type": "client_credentials"}).encode(), "HTTP_AUTHORIZATION": f"Basic {basic}"}
    federated = [federated_request(key, jwk["kid"]) for _ in range(fresh + 1)]
    return app, secret_request, federated[0], federated[1:]


def federated_request(key: Any, kid: str, audience: str = ISSUER) -> dict[str, bytes]:
    now = int(time.time())
    uid = str(uuid.uuid4())
    claims = {
        "iss": CLUSTER,
        "sub": "system:serviceaccount:prod:billing",
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": uid,
        "kubernetes.io": {
            "namespace": "prod",
            "pod": {"name": "billing-7d9c5b8f6-x2x4k", "uid": uid},
            "serviceaccount": {"name": "billing", "uid": "0c4e0c7e-2f4d-4c5e-9d7e-8c1f2b3a4d5e"},
        },
    }
    form = {
        "grant_type": "client_credentials",
        "client_id": "billing",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid}),
    }
    return {"body": urlencode(form).encode()}


def signed_bodies(pem: bytes, kid: str, audience: str, count: int) -> str:
    """`count` federated request bodies, one per line, each with a new token (signed by as many processes as cores)."""
    processes = os.cpu_count() or 1
    shares = [count // processes + (1 if n < count % processes else 0) for n in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        return "".join(pool.map(_signed_share, [(pem, kid, audience, share) for share in shares]))


def _signed_share(task: tuple[bytes, str, str, int]) -> str:
    pem, kid, audience, count = task
    key = serialization.load_pem_private_key(pem, None)
    return "".join(federated_request(key, kid, audience)["body"].decode() + "\n" for _ in range(count))


def call(app: Any, request: dict[str, Any]) -> str:
    body = request["body"]
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/oauth/token",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(body),
        **({"HTTP_AUTHORIZATION": request["HTTP_AUTHORIZATION"]} if "HTTP_AUTHORIZATION" in request else {}),
    }
    status: list[str] = []
    b"".join(app.wsgi_app(environ, lambda s, h: status.append(s)))
    return status[0]


def batch(app: Any, requests: Iterator[dict[str, Any]]) -> tuple[float, float]:
    """CPU and wall seconds for BATCH requests; every answer must be 200."""
    todo = [next(requests) for _ in range(BATCH)]
    cpu, wall = time.process_time(), time.perf_counter()
    for request in todo:
        status = call(app, request)
        if not status.startswith("200"):
            sys.exit(f"non-200 answer: {status}")
    return time.process_time() - cpu, time.perf_counter() - wall


def round_rates(app: Any, kinds: dict[str, Iterator[dict[str, Any]]], seconds: float) -> dict[str, tuple[float, float]]:
    """(CPU-time req/s, wall req/s) of each kind over alternating batches, for `seconds` or until a kind
    runs out of requests."""
    spent = {name: [0.0, 0.0, 0] for name in kinds}
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            for name, requests in kinds.items():
                cpu, wall = batch(app, requests)
                spent[name][0] += cpu
                spent[name][1] += wall
                spent[name][2] += BATCH
    except StopIteration:
        pass
    return {name: (count / cpu, count / wall) for name, (cpu, wall, count) in spent.items() if count}


def serve(args: argparse.Namespace) -> None:
    """The three kinds against a real `tokendealer serve`, alternating wrk runs; medians and ratios."""
    port = free_port()
    setup = Setup.create(port)
    url = setup.env["TOKENDEALER_ISSUER"]
    key = rsa.generate_private_key(65537, 2048)
    jwk = public_jwk(key.public_key(), "RS256")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (setup.directory / "cluster-jwks.json").write_text(json.dumps({"keys": [jwk]}))
    for command in (
        ["client", "create", "billing", "--no-secret", "--scope", SCOPE, "--audience", AUDIENCE],
        ["issuers", "add", CLUSTER, "--jwks", str(setup.directory / "cluster-jwks.json")],
        ["client", "federate", "billing", "--issuer", CLUSTER, "--subject", "system:serviceaccount:prod:billing"]
        + ["--condition", "kubernetes.io.namespace=prod"],
    ):
        subprocess.run([str(BIN / "tokendealer"), *command], env=setup.env, check=True, capture_output=True)
    authorization = basic_header(setup.client_id, setup.client_secret)
    reused = federated_request(key, jwk["kid"], url)["body"].decode()
    # Every kind goes through the same script over a file of as many bodies, so wrk does the same work for each.
    files = {kind: setup.directory / f"{kind}.bodies" for kind in ("secret", "reused", "new")}
    files["secret"].write_text("grant_type=client_credentials\n" * args.max_tokens)
    files["reused"].write_text((reused + "\n") * args.max_tokens)
    script = str(HERE / "bodies.lua")
    try:
        env, cwd = checkout_env(setup.env, args.checkout) if args.checkout else (setup.env, None)
        with Server([str(BIN / "tokendealer"), "serve", "--port", str(port), "--workers", "2"], port, env, "/readyz", cwd=cwd) as server:
            rates: dict[str, list[float]] = {"secret": [], "reused": [], "new": []}
            cpu: dict[str, list[float]] = {"secret": [], "reused": [], "new": []}
            # Each round's ratio of a kind to the secret run beside it (seconds apart): the machine's drift between
            # rounds cancels out of these, not out of the ratio of the medians.
            paired: dict[str, list[float]] = {"reused": [], "new": []}
            refused = again = 0
            for number in range(args.rounds):
                print(f"round {number + 1}: signing {args.max_tokens} workload tokens...", flush=True)
                files["new"].write_text(signed_bodies(pem, jwk["kid"], url, args.max_tokens))
                order = ["secret", "reused", "new"] if number % 2 == 0 else ["new", "reused", "secret"]
                runs = {}
                for kind in order:
                    env = {"WRK_BODIES": str(files[kind]), "WRK_THREADS": "2"}
                    # With the server's own CPU per request: what each kind costs it, whatever wrk spends on the bodies.
                    runs[kind] = server.loaded(
                        wrk,
                        url + "/oauth/token",
                        authorization if kind == "secret" else "",
                        "",
                        args.connections,
                        int(args.seconds),
                        script=script,
                        extra_env=env,
                    )
                for kind, run in runs.items():
                    rates[kind].append(run["rps"])
                    cpu[kind].append(run["cpu_us"])
                    refused += int(run["non200"] + run["errors"])
                for kind in ("reused", "new"):
                    paired[kind].append(runs[kind]["rps"] / runs["secret"]["rps"])
                again += int(runs["new"]["reused"])
                print(
                    f"round {number + 1}: "
                    + ", ".join(
                        f"{kind} {runs[kind]['rps']:.0f} req/s "
                        f"(p99 {runs[kind]['p99_ms']:.1f} ms, server cpu {runs[kind]['cpu_us']:.0f} us/req)"
                        for kind in ("secret", "reused", "new")
                    )
                    + f"; this round's ratios to secret: re-used {paired['reused'][-1]:.2f}x, new {paired['new'][-1]:.2f}x",
                    flush=True,
                )
            median = {kind: statistics.median(values) for kind, values in rates.items()}
            print(
                f"median: secret {median['secret']:.0f} req/s; federated, re-used token {median['reused']:.0f} req/s "
                f"({median['reused'] / median['secret']:.2f}x); federated, new token each request {median['new']:.0f} req/s "
                f"({median['new'] / median['secret']:.2f}x); non-200 or socket errors: {refused}; new tokens sent twice: {again}"
            )
            print(
                "median of the rounds' own ratios to secret: "
                + "; ".join(
                    f"{name} {statistics.median(paired[kind]):.2f}x (rounds {min(paired[kind]):.2f}-{max(paired[kind]):.2f}x)"
                    for kind, name in (("reused", "re-used token"), ("new", "new token each request"))
                )
            )
            per_request = {kind: statistics.median(values) for kind, values in cpu.items()}
            print(
                f"median server cpu per request: secret {per_request['secret']:.0f} us; re-used {per_request['reused']:.0f} us "
                f"(capacity {per_request['secret'] / per_request['reused']:.2f}x); new {per_request['new']:.0f} us "
                f"(capacity {per_request['secret'] / per_request['new']:.2f}x)"
            )
    finally:
        setup.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", action="store_true", help="against a real `tokendealer serve` instead of in process")
    parser.add_argument("--connections", type=int, default=64, help="--serve: wrk connections")
    parser.add_argument("--max-tokens", type=int, default=24000, help="--serve: new workload tokens signed per round")
    parser.add_argument("--checkout", help="--serve: serve another checkout's code (say a git worktree of an older commit)")
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    with tempfile.TemporaryDirectory(prefix="tokendealer-bench-") as tmp:
        print(f"signing {FRESH_PER_ROUND * args.rounds} workload tokens...", flush=True)
        app, secret, reused, fresh = build(Path(tmp), FRESH_PER_ROUND * args.rounds)
        round_rates(app, {"secret": itertools.repeat(secret), "reused": itertools.repeat(reused)}, 0.5)  # warm caches
        rows = []
        for number in range(1, args.rounds + 1):
            own = iter(fresh[(number - 1) * FRESH_PER_ROUND : number * FRESH_PER_ROUND])
            kinds = {"secret": itertools.repeat(secret), "reused": itertools.repeat(reused), "new": own}
            rates = round_rates(app, kinds, args.seconds)
            rows.append(rates)
            print(
                f"round {number}: req/s per CPU second / wall clock: "
                + ", ".join(f"{name} {cpu:.0f} / {wall:.0f}" for name, (cpu, wall) in rates.items()),
                flush=True,
            )
        for measure, label in ((0, "per CPU second"), (1, "wall clock")):
            median = {name: statistics.median(row[name][measure] for row in rows) for name in rows[0]}
            print(
                f"median {label}: secret {median['secret']:.0f} req/s; federated, re-used token {median['reused']:.0f} req/s "
                f"({median['reused'] / median['secret']:.2f}x); federated, new token each request {median['new']:.0f} req/s "
                f"({median['new'] / median['secret']:.2f}x)"
            )


if __name__ == "__main__":
    main()
