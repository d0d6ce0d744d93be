"""TokenDealer against its peers, in one run on this machine, the same wrk load against each, alternating.

    .venv/bin/python benchmarks/peers.py [--seconds 10] [--rounds 2] [--connections 16 64] [--without-node] [--baseline CHECKOUT]

Peers:
- the token floor (`peers/token_floor.py`): the irreducible work of a token response (form, HMAC-checked
  secret, RFC 9068 claims, ES256 with a pre-parsed key, JSON with no-store headers) as a bare WSGI app on
  granian (2 workers, 1 blocking thread each, no access log): what TokenDealer is held to (>= 0.8x);
- panva's node `oidc-provider` (installed from npm into benchmarks/out/node on first use), client-credentials
  with resource indicators issuing ES256 JWT access tokens, in one process and in a 2-process node:cluster;
- a bare Flask endpoint that parses the same form and returns JSON, no crypto, on the same server stack
  as `tokendealer serve` (granian, same workers and threads, access log on): the ceiling of this stack.

With `--baseline CHECKOUT` (say a `git worktree` of an older commit), that checkout's code is served too, by
this venv's `tokendealer serve` started in that folder with PYTHONPATH pointing at it (granian's processes run
`python -c`, which imports from the current folder first): before and after in the same run.

Prints each figure (median of the rounds) with the server's CPU time per request (all its processes), TokenDealer's
req/s, p99 and CPU-per-request ratios to each peer, and writes
benchmarks/out/peers.json for chart.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from harness import (
    AUDIENCE,
    BIN,
    HERE,
    Server,
    Setup,
    basic_header,
    check_token,
    checkout_env,
    fmt,
    free_port,
    granian_command,
    token_body,
    wrk,
)

sys.path.insert(0, str(HERE.parent))
from tokendealer.serving import default_workers  # noqa: E402

OUT = HERE / "out"
NODE_DIR = OUT / "node"


def install_oidc_provider() -> None:
    if not (NODE_DIR / "node_modules" / "oidc-provider").exists():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--prefix", str(NODE_DIR), "oidc-provider@9"], check=True, timeout=600)
    shutil.copy(HERE / "peers" / "oidc_provider.mjs", NODE_DIR / "oidc_provider.mjs")


def oidc_provider_env(port: int, workers: int, client_id: str, secret: str) -> dict[str, str]:
    key = jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    key.update(alg="ES256", use="sig", kid="bench")
    return {
        **os.environ,
        "PORT": str(port),
        "WORKERS": str(workers),
        "AUDIENCE": AUDIENCE,
        "CLIENT_ID": client_id,
        "CLIENT_SECRET": secret,
        "SIGNING_JWK": json.dumps(key),
        "NODE_ENV": "production",
    }


def targets_td_command(port: int) -> list:
    return [BIN / "tokendealer", "serve", "--port", str(port)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--without-node", action="store_true", help="skip oidc-provider (TokenDealer, floor and bare Flask only)")
    parser.add_argument(
        "--baseline", metavar="CHECKOUT", help="also serve another checkout's code (on PYTHONPATH), as `tokendealer @ CHECKOUT`"
    )
    args = parser.parse_args()
    if not args.without_node:
        install_oidc_provider()
    port = free_port()
    setup = Setup.create(port)
    auth = basic_header(setup.client_id, setup.client_secret)
    workers = default_workers()
    targets = {
        "tokendealer": (targets_td_command(port), setup.env, None, token_body()),
        "token floor (granian)": (
            granian_command(port, "token_floor:create_app", workers, access_log=False),
            {**os.environ, "PYTHONPATH": str(HERE / "peers"), "FLOOR_CLIENT_ID": setup.client_id, "FLOOR_SECRET": setup.client_secret},
            None,
            token_body(),
        ),
        "bare-flask (granian)": (
            granian_command(port, "bare_flask:create_app", workers),
            {**os.environ, "PYTHONPATH": str(HERE / "peers")},
            None,
            token_body(),
        ),
        "oidc-provider 1 proc": (
            ["node", str(NODE_DIR / "oidc_provider.mjs")],
            oidc_provider_env(port, 1, setup.client_id, setup.client_secret),
            str(NODE_DIR),
            f"grant_type=client_credentials&resource={AUDIENCE}&scope=read",
        ),
        "oidc-provider cluster 2": (
            ["node", str(NODE_DIR / "oidc_provider.mjs")],
            oidc_provider_env(port, 2, setup.client_id, setup.client_secret),
            str(NODE_DIR),
            f"grant_type=client_credentials&resource={AUDIENCE}&scope=read",
        ),
    }
    if args.baseline:
        baseline = (targets_td_command(port), *checkout_env(setup.env, args.baseline), token_body())
        targets = {"tokendealer": targets.pop("tokendealer"), f"tokendealer @ {args.baseline}": baseline, **targets}
    if args.without_node:
        targets = {name: target for name, target in targets.items() if "oidc" not in name}
    runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in args.connections} for name in targets}
    try:
        for _ in range(args.rounds):
            for name, (command, env, cwd, body) in targets.items():
                ready = "/healthz" if "oidc" not in name else "/.well-known/openid-configuration"
                with Server(command, port, env=env, ready_path=ready, cwd=cwd) as server:
                    check_token(server.url + ("/oauth/token" if "oidc" not in name else "/token"), auth, body)
                    for connections in args.connections:
                        url = server.url + ("/oauth/token" if "oidc" not in name else "/token")
                        result = server.loaded(wrk, url, auth, body, connections, args.seconds)
                        runs[name][connections].append(result)
    finally:
        setup.cleanup()
    medians = {
        name: {c: {k: statistics.median(r[k] for r in results) for k in results[0]} for c, results in per_c.items()}
        for name, per_c in runs.items()
    }
    print(f"{os.cpu_count()} cores, wrk -t2, {args.seconds} s per run, {args.rounds} alternating rounds, medians")
    for connections in args.connections:
        ours = medians["tokendealer"][connections]["rps"]
        for name in targets:
            m = medians[name][connections]
            ours_p99 = medians["tokendealer"][connections]["p99_ms"]
            ours_cpu = medians["tokendealer"][connections]["cpu_us"]
            ratios = f"req/s {ours / m['rps']:.2f}x, p99 {ours_p99 / m['p99_ms']:.2f}x, cpu/req {ours_cpu / m['cpu_us']:.2f}x"
            ratio = "" if name == "tokendealer" else f"   tokendealer/peer: {ratios}"
            print(f"c{connections:<3} {name:<24} {fmt(m)}  server cpu {m['cpu_us']:6.1f} us/req{ratio}")
    OUT.mkdir(exist_ok=True)
    (OUT / "peers.json").write_text(json.dumps({"seconds": args.seconds, "rounds": args.rounds, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
