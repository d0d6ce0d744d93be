"""Token throughput of 1, 2 and 3 instances sharing PostgreSQL (and Redis), against one SQLite instance.

    .venv/bin/python benchmarks/instances.py [--seconds 10] [--connections 64]

Each run keeps the default worker count of `tokendealer serve` split across the instances (at least one each); one wrk per
instance runs at the same time (connections split evenly), and the req/s are summed. PostgreSQL on
127.0.0.1:5432 (database `test`, a throw-away schema) and Redis on 127.0.0.1:6379 must be running.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from harness import BIN, HERE, Server, basic_header, check_token, free_port, token_body, wrk

sys.path.insert(0, str(HERE.parent))
from tokendealer.serving import default_workers  # noqa: E402

POSTGRES = os.environ.get("TOKENDEALER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TOKENDEALER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def environment(directory: Path, database_url: str, shared: bool) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(
        TOKENDEALER_ISSUER="http://127.0.0.1",
        TOKENDEALER_KEYS_DIR=str(directory / "keys"),
        TOKENDEALER_DATABASE_URL=database_url,
        TOKENDEALER_AUDIT_LOG=str(directory / "audit.log"),
    )
    if shared:
        env.update(
            TOKENDEALER_KEYRING="database",
            TOKENDEALER_KEY_ENCRYPTION_KEY=secrets.token_urlsafe(32),
            TOKENDEALER_RATELIMIT_STORAGE=REDIS,
            TOKENDEALER_REPLAY_CACHE=REDIS,
        )
    return env


def prepare(env: dict[str, str]) -> str:
    subprocess.run([BIN / "tokendealer", "init"], env=env, check=True, capture_output=True)
    out = subprocess.run(
        [BIN / "tokendealer", "client", "create", "bench", "--scope", "read", "--audience", "https://api.example.com"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)["client_secret"]


def run(env: dict[str, str], secret: str, instances: int, seconds: int, connections: int) -> dict[str, float]:
    workers = max(1, default_workers() // instances)
    auth, body = basic_header("bench", secret), token_body()
    ports = [free_port() for _ in range(instances)]
    servers = [Server([BIN / "tokendealer", "serve", "--port", str(p), "--workers", str(workers)], p, env=env) for p in ports]
    for server in servers:
        server.__enter__()
    try:
        for server in servers:
            check_token(server.url + "/oauth/token", auth, body)
        per = max(1, connections // instances)
        with ThreadPoolExecutor(instances) as pool:
            results = list(pool.map(lambda s: wrk(s.url + "/oauth/token", auth, body, per, seconds, threads=1), servers))
    finally:
        for server in servers:
            server.__exit__(None, None, None)
    return {
        "rps": sum(r["rps"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "non200": sum(r["non200"] for r in results),
        "workers_each": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="td-instances-"))
    schema = "td_bench_" + secrets.token_hex(4)
    admin = sa.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        sqlite_env = environment(directory / "sqlite", f"sqlite:///{directory / 'sqlite' / 'td.db'}", shared=False)
        pg_env = environment(directory / "pg", f"{POSTGRES}?options=-csearch_path%3D{schema}", shared=True)
        rows = [("SQLite, 1 instance", sqlite_env, prepare(sqlite_env), 1)]
        pg_secret = prepare(pg_env)
        rows += [(f"PostgreSQL + Redis, {n} instance(s)", pg_env, pg_secret, n) for n in (1, 2, 3)]
        print(f"{os.cpu_count()} cores, {args.connections} connections in all, {args.seconds} s each, one wrk per instance")
        baseline = None
        for name, env, secret, n in rows:
            result = run(env, secret, n, args.seconds, args.connections)
            baseline = baseline or result["rps"]
            print(
                f"{name:<34} {result['rps']:8.0f} req/s  ({result['rps'] / baseline:4.2f}x SQLite)  "
                f"worst p99 {result['p99_ms']:6.2f} ms  non-200 {int(result['non200'])}  workers/instance {result['workers_each']}",
                flush=True,
            )
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
