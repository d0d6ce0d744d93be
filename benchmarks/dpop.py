"""DPoP (RFC 9449) against plain tokens, same run: token requests/s at `tokendealer serve`, and
TokenVerifier verifications/s of bound tokens (a fresh proof each) against plain ones.

    .venv/bin/python benchmarks/dpop.py [--seconds 5] [--rounds 2] [--threads 8] [--verifications 2000] [--replay-cache redis://…]

Token endpoint: a real `tokendealer serve` (2 workers, SQLite, ES256) on loopback; `--threads` keep-alive
connections POST client-credentials requests, with and without a DPoP header, rounds alternating which goes
first. wrk cannot send DPoP (every proof must be new), so the load is Python's http.client, and each round's
proofs are signed before the round starts, so the driver does the same work for both kinds. Bounded: each
round stops after `--seconds` (or when its proofs run out). Each DPoP request records its proof's jti in the
replay cache: the database (default) or `--replay-cache` (TOKENDEALER_REPLAY_CACHE, e.g. a Redis URL).

Verifier: in this process, `TokenVerifier.verify` of a plain token, warm (from the verified-token cache) and
cold (its signature checked each time), against a warm DPoP-bound token with a new proof per call (proof
parse and signature, claim checks, ath, memory replay cache), in alternating batches; `--verifications` calls
of each per round. Each is reported as a median over rounds, with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import AUDIENCE, BIN, SCOPE, Server, Setup, basic_header, free_port, http_load  # noqa: E402
from client_lib import TokenClient, TokenVerifier  # noqa: E402
from client_lib.core.dpop import DPoPKey  # noqa: E402

BODY = f"grant_type=client_credentials&audience={AUDIENCE}&scope={SCOPE}"
RESOURCE = "https://api.example.com/invoices"


def token_load(port: int, authorization: str, proofs: list[str] | None, seconds: float, threads: int) -> dict[str, float]:
    """Requests/s of `threads` keep-alive connections for `seconds`; each request takes the next proof when given."""
    headers = {"Authorization": authorization}
    supply = iter(proofs) if proofs is not None else None

    def next_request() -> tuple[dict[str, str], str] | None:
        if supply is None:
            return headers, BODY
        proof = next(supply, None)
        return None if proof is None else ({**headers, "DPoP": proof}, BODY)

    return http_load(port, next_request, seconds, threads)


def verify_rate(verify, count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        verify(index)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--verifications", type=int, default=2000)
    parser.add_argument("--max-proofs", type=int, default=20000, help="proofs signed per DPoP round (bounds its length)")
    parser.add_argument("--replay-cache", default="database", help="TOKENDEALER_REPLAY_CACHE of the server")
    args = parser.parse_args()
    rounds = max(2, args.rounds)
    port = free_port()
    setup = Setup.create(port)
    setup.env["TOKENDEALER_REPLAY_CACHE"] = args.replay_cache
    try:
        with Server([str(BIN / "tokendealer"), "serve", "--port", str(port), "--workers", "2"], port, setup.env, "/readyz") as server:
            key = DPoPKey(True, time.time)
            authorization = basic_header(setup.client_id, setup.client_secret)
            token_load(port, authorization, None, 1.0, args.threads)  # warm-up
            plain, bound, refused = [], [], 0
            for round_number in range(rounds):
                proofs = [key.proof("POST", server.url + "/oauth/token") for _ in range(args.max_proofs)]
                runs = {}
                for kind in ("plain", "dpop") if round_number % 2 == 0 else ("dpop", "plain"):
                    runs[kind] = token_load(port, authorization, proofs if kind == "dpop" else None, args.seconds, args.threads)
                plain.append(runs["plain"]["rps"])
                bound.append(runs["dpop"]["rps"])
                refused += int(runs["plain"]["non_200"] + runs["dpop"]["non_200"])
                print(f"round {round_number + 1}: plain {runs['plain']['rps']:.0f} req/s, DPoP {runs['dpop']['rps']:.0f} req/s")
            token_plain, token_dpop = statistics.median(plain), statistics.median(bound)
            print(f"token endpoint: plain {token_plain:.0f} req/s, DPoP {token_dpop:.0f} req/s, ratio {token_dpop / token_plain:.2f}")
            print(f"non-200 answers: {refused}; replay cache: {args.replay_cache}")

            plain_client = TokenClient(server.url, setup.client_id, setup.client_secret)
            dpop_client = TokenClient(server.url, setup.client_id, setup.client_secret, dpop_key=True)
            plain_token, dpop_token = plain_client.get_token(AUDIENCE, SCOPE), dpop_client.get_token(AUDIENCE, SCOPE)
            verifier = TokenVerifier(server.url, AUDIENCE)
            verifier.verify(plain_token)
            rates: dict[str, list[float]] = {"warm": [], "cold": [], "dpop": []}

            def cold(_index: int) -> None:
                verifier.policy.verified.clear()
                verifier.verify(plain_token)

            for round_number in range(rounds):
                proofs = [dpop_client.dpop.proof("GET", RESOURCE, dpop_token) for _ in range(args.verifications)]
                calls = {
                    "warm": lambda _i: verifier.verify(plain_token),
                    "cold": cold,
                    "dpop": lambda i, proofs=proofs: verifier.verify(dpop_token, dpop_proof=proofs[i], method="GET", url=RESOURCE),
                }
                for kind in list(calls) if round_number % 2 == 0 else list(calls)[::-1]:
                    rates[kind].append(verify_rate(calls[kind], args.verifications))
            warm, cold_rate, dpop = (statistics.median(rates[kind]) for kind in ("warm", "cold", "dpop"))
            print(f"TokenVerifier.verify: plain warm {warm:.0f}/s, plain cold {cold_rate:.0f}/s, DPoP-bound (fresh proof) {dpop:.0f}/s")
            print(f"ratios: DPoP / plain warm {dpop / warm:.4f}, DPoP / plain cold {dpop / cold_rate:.2f}")
    finally:
        setup.cleanup()


if __name__ == "__main__":
    main()
