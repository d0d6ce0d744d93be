"""Mutual TLS (RFC 8705): what certificate binding and certificate authentication cost.

    .venv/bin/python benchmarks/mtls.py [--tokens 2000] [--rounds 5] [--seconds 5] [--workers 2]

1. client_lib: TokenVerifier.verify of certificate-bound tokens (`client_cert=` the DER, read and hashed on
   every call, as require_token does) against plain tokens, on tokens not seen before (a signature check
   each) and seen before (cached); the kinds alternate within each round, medians of the rounds.
2. Server: `tokendealer serve` issuing tokens to a tls_client_auth client (the certificate in the header a
   trusted proxy sets, sent from loopback, which is the trusted proxy here: no nginx, so TLS itself is not
   measured) against a client_secret client, alternating bounded wrk runs (16 connections), medians.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (  # noqa: E402
    AUDIENCE,
    BIN,
    Server,
    Setup,
    basic_header,
    fmt,
    free_port,
    token_body,
    wrk,
)
from client_lib import TokenVerifier  # noqa: E402
from client_lib.core.certificates import load  # noqa: E402
from client_lib.jose import public_jwk  # noqa: E402
from tests.certificates import issue, make_ca, name  # noqa: E402

HEADER = "X-SSL-Client-Cert"
ISSUER = "https://td.example"


def verifier_rates(count: int, rounds: int) -> dict[str, float]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key.public_key(), "ES256")
    cert = issue(make_ca(), name(CN="billing"))
    bound_to = {"x5t#S256": load(cert.der).thumbprint}
    now = int(time.time())

    def tokens(cnf: dict | None) -> list[str]:
        out = []
        for _ in range(count):
            claims = {"iss": ISSUER, "sub": "svc", "client_id": "svc", "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 3600}
            claims.update(jti=secrets.token_urlsafe(18), scope="read", **({"cnf": cnf} if cnf else {}))
            out.append(jwt.encode(claims, key, algorithm="ES256", headers={"kid": jwk["kid"], "typ": "at+jwt"}))
        return out

    def verifier() -> TokenVerifier:
        v = TokenVerifier(ISSUER, AUDIENCE, jwks_uri=ISSUER + "/jwks")
        v.policy.accept_keys({"keys": [jwk]}, "max-age=3600", time.time())
        return v

    def rate(kind: str, warm: bool) -> float:
        v = verifier()
        batch = tokens(bound_to if kind == "bound" else None)
        presented = cert.der if kind == "bound" else None
        if warm:
            for token in batch:
                v.verify(token, client_cert=presented)
        started = time.perf_counter()
        for token in batch:
            v.verify(token, client_cert=presented)
        return count / (time.perf_counter() - started)

    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for warm in (False, True):
            for kind in ("plain", "bound"):
                samples.setdefault(f"{kind} {'seen' if warm else 'new'}", []).append(rate(kind, warm))
    return {label: statistics.median(values) for label, values in samples.items()}


def server_rates(rounds: int, seconds: int, workers: int) -> dict[str, dict[str, float]]:
    port = free_port()
    setup = Setup.create(port)
    cert = issue(make_ca(), name(O="Example", CN="bench-tls"))
    env = {**setup.env, "TOKENDEALER_TRUSTED_PROXIES": "127.0.0.1", "TOKENDEALER_CLIENT_CERT_HEADER": HEADER}
    import subprocess  # noqa: PLC0415

    subprocess.run(
        [
            BIN / "tokendealer",
            "client",
            "create",
            "bench-tls",
            "--scope",
            "read",
            "--audience",
            AUDIENCE,
            "--tls-subject",
            "CN=bench-tls,O=Example",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    url = f"http://127.0.0.1:{port}/oauth/token"
    kinds = {
        "client_secret_basic": {"authorization": basic_header(setup.client_id, setup.client_secret), "body": token_body(), "extra": {}},
        "tls_client_auth": {
            "authorization": "",
            "body": token_body() + "&client_id=bench-tls",
            "extra": {"WRK_CERT_HEADER": HEADER, "WRK_CERT": cert.nginx_escaped()},
        },
    }
    samples: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    command = [str(BIN / "tokendealer"), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    try:
        with Server(command, port, env=env):
            for kind, run in kinds.items():  # warm-up, and a check that each kind is answered 200
                result = wrk(url, run["authorization"], run["body"], 4, 1, extra_env=run["extra"])
                if result["non200"]:
                    raise RuntimeError(f"{kind}: {int(result['non200'])} non-200 answers")
            for _ in range(rounds):
                for kind, run in kinds.items():
                    samples[kind].append(wrk(url, run["authorization"], run["body"], 16, seconds, extra_env=run["extra"]))
    finally:
        setup.cleanup()
    return {kind: {field: statistics.median(r[field] for r in runs) for field in runs[0]} for kind, runs in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    verify = verifier_rates(args.tokens, args.rounds)
    print(f"TokenVerifier.verify, ES256, {args.tokens} tokens, median of {args.rounds} alternating rounds:")
    for label, value in verify.items():
        print(f"  {label:12s} {value:10.0f} /s")
    for state in ("new", "seen"):
        print(f"  bound/plain ({state}): {verify[f'bound {state}'] / verify[f'plain {state}']:.2f}x")
    served = server_rates(args.rounds, args.seconds, args.workers)
    print(f"tokendealer serve, {args.workers} workers, 16 connections, median of {args.rounds} alternating {args.seconds} s runs:")
    for kind, result in served.items():
        print(f"  {kind:20s} {fmt(result)}")
    print(f"  tls_client_auth/client_secret_basic: {served['tls_client_auth']['rps'] / served['client_secret_basic']['rps']:.2f}x")


if __name__ == "__main__":
    main()
