"""client_lib micro-benchmarks against PyJWT, per algorithm (ES256, RS256, EdDSA).

    .venv/bin/python benchmarks/client_lib_verify.py [--tokens 3000]

- raw `jwt.decode` with the key already in hand (the floor of any verifier);
- PyJWT's PyJWKClient flow (`get_signing_key_from_jwt` + `jwt.decode`), JWKS cached;
- TokenVerifier.verify on tokens not seen before (cold: a signature check each) and seen before (warm);
- TokenClient.get_token on a cached token.

A loopback HTTP server plays the issuer (discovery + JWKS), so only the verification is measured.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from client_lib import TokenClient, TokenVerifier  # noqa: E402

AUDIENCE = "https://api.example.com"
KEYS = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "RS256": lambda: rsa.generate_private_key(65537, 2048),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


class Issuer:
    """Discovery and JWKS on a loopback port."""

    def __init__(self, jwk: dict):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = json.dumps(issuer.documents.get(self.path, {})).encode()
                self.send_response(200 if self.path in issuer.documents else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=300")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.documents = {
            "/.well-known/oauth-authorization-server": {
                "issuer": self.url,
                "jwks_uri": self.url + "/jwks",
                "token_endpoint": self.url + "/token",
            },
            "/jwks": {"keys": [jwk]},
        }
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def rate(func, items, repeat: int = 3) -> float:
    """Calls per second of func over items: the median of `repeat` passes."""
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            func(item)
        rates.append(len(items) / (time.perf_counter() - started))
    return statistics.median(rates)


def bench_algorithm(alg: str, count: int) -> dict[str, float]:
    key = KEYS[alg]()
    jwk = {**jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": alg, "use": "sig"}
    issuer = Issuer(jwk)
    now = int(time.time())

    def token() -> str:
        claims = {
            "iss": issuer.url,
            "sub": "svc",
            "client_id": "svc",
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": secrets.token_urlsafe(18),
            "scope": "read write",
        }
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": "k1", "typ": "at+jwt"})

    tokens = [token() for _ in range(count)]
    public = key.public_key()
    out: dict[str, float] = {}
    out["raw jwt.decode"] = rate(lambda t: jwt.decode(t, public, algorithms=[alg], audience=AUDIENCE, issuer=issuer.url), tokens)
    jwks_client = jwt.PyJWKClient(issuer.url + "/jwks")
    out["PyJWKClient flow"] = rate(
        lambda t: jwt.decode(t, jwks_client.get_signing_key_from_jwt(t).key, algorithms=[alg], audience=AUDIENCE, issuer=issuer.url), tokens
    )
    cold = []
    for _ in range(3):
        verifier = TokenVerifier(issuer.url, AUDIENCE)
        verifier.verify(token())  # keys fetched: what is measured is verification, not the first fetch
        cold.append(rate(verifier.verify, tokens, repeat=1))
    out["TokenVerifier cold"] = statistics.median(cold)
    warm_tokens = [tokens[0]] * (count * 50)
    verifier.verify(tokens[0])
    out["TokenVerifier warm"] = rate(verifier.verify, warm_tokens)
    issuer.close()
    return out


def bench_cached_get_token(count: int) -> float:
    client = TokenClient("http://127.0.0.1:9", "svc", "secret", token_endpoint="http://127.0.0.1:9/token")
    client.cache.store(("https://api.example.com", "read"), {"access_token": "t" * 400, "expires_in": 3600}, time.time())
    keys = [("https://api.example.com", "read")] * count
    return rate(lambda k: client.get_token(*k), keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=3000)
    args = parser.parse_args()
    for alg in KEYS:
        results = bench_algorithm(alg, args.tokens)
        raw = results["raw jwt.decode"]
        print(f"{alg}")
        for name, value in results.items():
            print(f"  {name:<22} {value:>12,.0f} /s   {value / raw:6.2f}x raw jwt.decode")
    print(f"TokenClient.get_token cached {bench_cached_get_token(args.tokens * 100):>12,.0f} /s")


if __name__ == "__main__":
    main()
