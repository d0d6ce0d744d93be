"""Tokens signed per second through SoftHSM2 (PKCS#11) next to file keys, in one process and one run.

.venv/bin/python benchmarks/hsm.py [--seconds 2] [--rounds 3]

Measures `TokenService.issue` (claims, JSON, JWS signing) in a bounded loop for each algorithm and keyring,
on one core; the median of the rounds is printed. SoftHSM2 (Debian `softhsm2`) must be installed; a token is
initialised in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tokendealer.app import build_services
from tokendealer.config import Config
from tokendealer.db import make_engine, upgrade_schema
from tokendealer.keystores import make_key_store

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-1234"
ALGS = ("ES256", "RS256", "PS256", "EdDSA")


def softhsm(root: Path) -> None:
    (root / "tokens").mkdir()
    (root / "softhsm2.conf").write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(root / "softhsm2.conf")
    for alg in ALGS:
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", f"bench-{alg}", "--pin", PIN, "--so-pin", "so-" + PIN],
            check=True,
            capture_output=True,
        )


def rate(root: Path, keyring: str, alg: str, seconds: float, rounds: int) -> float:
    """Median tokens/s of `rounds` loops of `seconds` each."""
    where = root / f"{keyring}-{alg}"
    settings = {"keys_dir": str(where / "keys"), "database_url": f"sqlite:///{where / 'td.db'}"}
    if keyring == "pkcs11":
        settings.update(keyring="pkcs11", pkcs11_module=MODULE, pkcs11_token_label=f"bench-{alg}", pkcs11_pin=PIN)
    config = Config.load(environ={}, **settings)
    upgrade_schema(make_engine(config.database_url))
    make_key_store(config).init(alg)
    services = build_services(config)
    client, _ = services.clients.create("bench", scopes=["read"], audiences=["https://api"])
    results = []
    for _ in range(rounds):
        count, deadline = 0, time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline and count < 1_000_000:
            services.tokens.issue(client, ["https://api"], ["read"])
            count += 1
        results.append(count / (time.perf_counter() - started))
    services.engine.dispose()
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("softhsm2-util") or not Path(MODULE).exists():
        raise SystemExit("SoftHSM2 is not installed: apt-get install softhsm2")
    root = Path(tempfile.mkdtemp(prefix="tokendealer-hsm-bench-"))
    try:
        softhsm(root)
        print(f"{'alg':<6} {'file keys/s':>12} {'SoftHSM/s':>12} {'ratio':>6}")
        for alg in ALGS:
            file_rate = rate(root, "file", alg, args.seconds, args.rounds)
            hsm_rate = rate(root, "pkcs11", alg, args.seconds, args.rounds)
            print(f"{alg:<6} {file_rate:>12.0f} {hsm_rate:>12.0f} {hsm_rate / file_rate:>6.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
