"""Federated token requests per second next to secret-authenticated ones, in the same run.

    .venv/bin/python benchmarks/federation.py [--seconds 3] [--rounds 5]

In-process: the server's WSGI application (the token endpoint's own fast path) is called in a loop, with no
network, so the numbers compare the work of the two ways in. The federated request presents an RS256
Kubernetes-shaped projected token (re-used, as a pod does) from an issuer trusted with a JWK Set file, and
matches a rule with a subject and a `kubernetes.io.namespace` condition. Rounds alternate between the two
kinds so drift on a loaded machine hits both; each round is bounded by --seconds. Prints the req/s of each
kind per round and the ratio of the medians (target: federated >= 0.7x secret).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tokendealer.app import create_app
from tokendealer.config import Config
from tokendealer.db import make_engine, upgrade_schema
from tokendealer.federation import RuleStore
from tokendealer.issuers import IssuerStore
from tokendealer.keyring import public_jwk
from tokendealer.keystores import FileKeyStore

ISSUER = "http://127.0.0.1:5000"
CLUSTER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "https://billing"


def build(tmp: Path) -> tuple[Any, dict[str, bytes | str], dict[str, bytes | str]]:
    """The app, and the environ parts of a secret request and of a federated one."""
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
    now = int(time.time())
    projected = jwt.encode(
        {
            "iss": CLUSTER,
            "sub": "system:serviceaccount:prod:billing",
            "aud": [ISSUER],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": "prod",
                "pod": {"name": "billing-7d9c5b8f6-x2x4k", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": "billing", "uid": str(uuid.uuid4())},
            },
        },
        key,
        algorithm="RS256",
        headers={"kid": jwk["kid"]},
    )
    basic = base64.b64encode(f"secret-svc:{secret}".encode()).decode()
    secret_request = {"body": urlencode({"grant_type": "client_credentials"}).encode(), "HTTP_AUTHORIZATION": f"Basic {basic}"}
    federated = {
        "grant_type": "client_credentials",
        "client_id": "billing",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": projected,
    }
    return app, secret_request, {"body": urlencode(federated).encode()}


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


def rate(app: Any, request: dict[str, Any], seconds: float) -> float:
    """Requests per second over `seconds`; every answer must be 200."""
    count, start = 0, time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(50):
            status = call(app, request)
            if not status.startswith("200"):
                sys.exit(f"non-200 answer: {status}")
        count += 50
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokendealer-bench-") as tmp:
        app, secret_request, federated_request = build(Path(tmp))
        rate(app, secret_request, 0.5)  # warm both paths: caches, parsed keys
        rate(app, federated_request, 0.5)
        secret_rates, federated_rates = [], []
        for number in range(1, args.rounds + 1):
            secret_rates.append(rate(app, secret_request, args.seconds))
            federated_rates.append(rate(app, federated_request, args.seconds))
            print(f"round {number}: secret {secret_rates[-1]:8.0f} req/s   federated {federated_rates[-1]:8.0f} req/s", flush=True)
        secret, federated = statistics.median(secret_rates), statistics.median(federated_rates)
        print(f"median: secret {secret:.0f} req/s, federated {federated:.0f} req/s, ratio {federated / secret:.2f}x")


if __name__ == "__main__":
    main()
