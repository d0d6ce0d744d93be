"""How the token path's cost grows with the data it sits on: token req/s and worker RSS against the number
of registered clients, of live revocations and of published keys.

    .venv/bin/python benchmarks/scale.py [--seconds 8] [--rounds 2] [--connections 64]
        [--pg-clients 1 10000 1000000] [--sqlite-clients 1 10000 100000]
        [--revocations 0 100000 1000000] [--keys 2 10 50]

Each size is its own database (a SQLite file, or a PostgreSQL schema at TOKENDEALER_BENCH_POSTGRES_URL),
filled with SQL in bulk; clients are copies of one real client (same secret), and with more than one the
load is spread over 1,000 distinct ids across the registry (client_secret_post, `token_spread.lua`).
Revocations are live (unexpired) rows; keys are published retired keys (rotations not pruned). Sizes run
in alternating rounds, each after 3 s of the same load (so every worker has read its clients once: the
steady state, not the first pass); the medians are printed as a table, with each rate relative to the smallest size,
and drawn in benchmarks/scale.png. RSS is the largest worker's after its run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from harness import AUDIENCE, BIN, HERE, SCOPE, Server, check_token, free_port, wrk

sys.path.insert(0, str(HERE.parent))
from tokendealer import db  # noqa: E402
from tokendealer.config import Config  # noqa: E402
from tokendealer.keystores import make_key_store  # noqa: E402

POSTGRES = os.environ.get("TOKENDEALER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SPREAD = 1000
WARM_UP = 3  # seconds of load before each measured run
FAR = 4_000_000_000.0  # an expiry far ahead: every revocation stays live


class Point:
    """One database of a given size, with the environment to serve it."""

    def __init__(self, series: str, size: int, directory: Path, database_url: str, cleanup_schema: str | None = None):
        self.series, self.size, self.directory = series, size, directory
        self.cleanup_schema = cleanup_schema
        directory.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
        self.env.update(
            TOKENDEALER_ISSUER="http://127.0.0.1",
            TOKENDEALER_KEYS_DIR=str(directory / "keys"),
            TOKENDEALER_DATABASE_URL=database_url,
            TOKENDEALER_AUDIT_LOG=str(directory / "audit.log"),
        )
        subprocess.run([BIN / "tokendealer", "init"], env=self.env, check=True, capture_output=True)
        out = subprocess.run(
            [BIN / "tokendealer", "client", "create", "c0", "--scope", SCOPE, "--audience", AUDIENCE],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        self.secret = json.loads(out.stdout)["client_secret"]
        self.clients = ["c0"]
        self.runs: list[dict[str, float]] = []

    def engine(self) -> sa.Engine:
        return db.make_engine(self.env["TOKENDEALER_DATABASE_URL"])

    def add_clients(self, count: int) -> None:
        """`count` - 1 more clients copied from c0 (ids c1 ...), and the 1,000 (or fewer) the load uses."""
        if count <= 1:
            return
        columns = [c.name for c in db.clients.c if c.name != "client_id"]
        listed = ", ".join(columns)
        engine = self.engine()
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    f"INSERT INTO clients (client_id, {listed}) SELECT 'c' || n, {listed} FROM clients, "
                    f"generate_series(1, {count - 1}) AS n WHERE client_id = 'c0'"
                )
            else:
                conn.exec_driver_sql(
                    f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count - 1}) "
                    f"INSERT INTO clients (client_id, {listed}) SELECT 'c' || n, {listed} FROM clients, s WHERE client_id = 'c0'"
                )
        engine.dispose()
        step = max(1, count // SPREAD)
        self.clients = [f"c{i}" for i in range(0, count, step)][:SPREAD]

    def add_revocations(self, count: int) -> None:
        if not count:
            return
        engine = self.engine()
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    "INSERT INTO revoked_tokens (jti, client_id, expires_at) "
                    f"SELECT 'j' || n, 'c0', {FAR} FROM generate_series(1, {count}) n"
                )
            else:
                conn.exec_driver_sql(
                    f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) "
                    f"INSERT INTO revoked_tokens (jti, client_id, expires_at) SELECT 'j' || n, 'c0', {FAR} FROM s"
                )
        engine.dispose()

    def add_keys(self, published: int) -> None:
        """Rotate until `published` keys are in the JWKS (init publishes two: active and next)."""
        store = make_key_store(Config.load(environ=self.env))
        for _ in range(max(0, published - 2)):
            store.rotate()

    def measure(self, seconds: int, connections: int) -> None:
        port = free_port()
        env = {**self.env, "TOKENDEALER_ISSUER": f"http://127.0.0.1:{port}"}
        rest = f"grant_type=client_credentials&audience={quote(AUDIENCE, safe='')}&scope={SCOPE}"
        with Server([BIN / "tokendealer", "serve", "--port", str(port)], port, env=env) as server:
            url = server.url + "/oauth/token"
            check_token(url, "", f"{rest}&client_id={self.clients[-1]}&client_secret={self.secret}")
            spread = {
                "script": str(HERE / "token_spread.lua"),
                "extra_env": {"WRK_CLIENTS": " ".join(self.clients), "WRK_SECRET": self.secret},
            }
            wrk(url, "", rest, connections, WARM_UP, **spread)  # every worker has read its clients once: steady state
            result = server.loaded(wrk, url, "", rest, connections, seconds, **spread)
            result["rss_mb"] = max(server.rss_mb())
        self.runs.append(result)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.runs)

    def cleanup(self, admin: sa.Engine | None) -> None:
        if self.cleanup_schema and admin is not None:
            with admin.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{self.cleanup_schema}" CASCADE')


def build(args: argparse.Namespace, root: Path, admin: sa.Engine | None) -> list[Point]:
    points: list[Point] = []

    def sqlite(series: str, size: int) -> Point:
        directory = root / f"{series}-{size}"
        return Point(series, size, directory, f"sqlite:///{directory / 'td.db'}")

    def postgres(series: str, size: int) -> Point:
        schema = "td_scale_" + secrets.token_hex(4)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        return Point(series, size, root / f"{series}-{size}", f"{POSTGRES}?options=-csearch_path%3D{schema}", cleanup_schema=schema)

    for size in args.sqlite_clients:
        started = time.monotonic()
        points.append(point := sqlite("clients, SQLite", size))
        point.add_clients(size)
        print(f"filled SQLite with {size:,} clients in {time.monotonic() - started:.0f} s", flush=True)
    if admin is not None:
        for size in args.pg_clients:
            started = time.monotonic()
            points.append(point := postgres("clients, PostgreSQL", size))
            point.add_clients(size)
            print(f"filled PostgreSQL with {size:,} clients in {time.monotonic() - started:.0f} s", flush=True)
    for size in args.revocations:
        started = time.monotonic()
        points.append(point := sqlite("live revocations, SQLite", size))
        point.add_revocations(size)
        print(f"filled SQLite with {size:,} revocations in {time.monotonic() - started:.0f} s", flush=True)
    for size in args.keys:
        points.append(point := sqlite("published keys, file keyring", size))
        point.add_keys(size)
    return points


def chart(points: list[Point], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    series = list(dict.fromkeys(p.series for p in points))
    fig, axes = plt.subplots(2, len(series), figsize=(4 * len(series), 6), squeeze=False)
    for column, name in enumerate(series):
        mine = [p for p in points if p.series == name]
        sizes = [max(1, p.size) for p in mine]
        base = mine[0].median("rps")
        axes[0][column].plot(sizes, [p.median("rps") / base for p in mine], marker="o")
        axes[0][column].axhspan(0.85, 1.15, color="green", alpha=0.1)
        axes[0][column].set_ylim(0, 1.4)
        axes[0][column].set_title(name, fontsize=9)
        axes[0][column].set_ylabel("req/s relative to the smallest")
        axes[1][column].plot(sizes, [p.median("rss_mb") for p in mine], marker="o", color="tab:orange")
        axes[1][column].set_ylim(0, max(p.median("rss_mb") for p in points) * 1.2)
        axes[1][column].set_ylabel("largest worker RSS, MB")
        for row in (0, 1):
            axes[row][column].set_xscale("log")
            axes[row][column].set_xlabel("size")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--pg-clients", type=int, nargs="*", default=[1, 10_000, 1_000_000])
    parser.add_argument("--sqlite-clients", type=int, nargs="*", default=[1, 10_000, 100_000])
    parser.add_argument("--revocations", type=int, nargs="*", default=[0, 100_000, 1_000_000])
    parser.add_argument("--keys", type=int, nargs="*", default=[2, 10, 50])
    parser.add_argument("--chart", default=str(HERE / "scale.png"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="td-scale-"))
    admin = sa.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1)) if args.pg_clients else None
    points: list[Point] = []
    try:
        points = build(args, root, admin)
        for round_ in range(args.rounds):
            for point in points:
                point.measure(args.seconds, args.connections)
                run = point.runs[-1]
                print(
                    f"round {round_ + 1} {point.series:<30} {point.size:>9,}  {run['rps']:7.0f} req/s  p99 {run['p99_ms']:6.1f} ms"
                    f"  server cpu {run['cpu_us']:6.1f} us/req",
                    flush=True,
                )
        print(f"\n{os.cpu_count()} cores, {args.connections} connections, {args.seconds} s per run, medians of {args.rounds} rounds")
        print("| series | size | req/s | vs smallest | p99 ms | server CPU µs/request | non-200 | largest worker RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        base: dict[str, float] = {}
        for point in points:
            rps = point.median("rps")
            base.setdefault(point.series, rps)
            print(
                f"| {point.series} | {point.size:,} | {rps:,.0f} | {rps / base[point.series]:.2f}x | {point.median('p99_ms'):.1f} | "
                f"{point.median('cpu_us'):.0f} | "
                f"{int(sum(r['non200'] for r in point.runs))} | {point.median('rss_mb'):.1f} |"
            )
        chart(points, Path(args.chart))
        print(f"chart: {args.chart}")
    finally:
        for point in points:
            point.cleanup(admin)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
