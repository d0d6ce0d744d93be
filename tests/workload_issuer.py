"""A small external OIDC issuer for the federation tests (test code on PyJWT and http.server): OIDC discovery
and a JWK Set on loopback, and workload tokens with the documented claim shapes of
- a Kubernetes projected service-account token (kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin,
  "bound service account tokens"): `iss`, `sub` = system:serviceaccount:NS:NAME, `aud` (a list), `exp`, `iat`,
  `nbf`, `jti`, and `kubernetes.io` {namespace, serviceaccount {name, uid}, pod {name, uid}}; RS256;
- a GitHub Actions OIDC token (docs.github.com, "About security hardening with OpenID Connect"): `sub` =
  repo:ORG/REPO:ref:refs/heads/main, `repository`, `repository_owner`, `ref`, `environment`, `workflow`, …; RS256;
- a SPIFFE JWT-SVID (spiffe.io JWT-SVID standard §3): `sub` = spiffe://trust.domain/ns/prod/sa/billing, `aud`,
  `exp`, `iat`; ES256.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from client_lib.jose import public_jwk

# RSA keys are slow to make: the suite cycles through a few, so consecutive keys (one issuer's rotation, a
# test's second issuer) always differ while the whole suite makes at most eight.
_KEYS: dict[str, list[Any]] = {}
_TURN = itertools.count()


def _next_key(alg: str) -> Any:
    pool = _KEYS.setdefault(alg, [])
    if len(pool) < 8:
        pool.append(ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa.generate_private_key(65537, 2048))
        return pool[-1]
    return pool[next(_TURN) % len(pool)]


class WorkloadIssuer:
    """Serves `/.well-known/openid-configuration` and `/keys`; counts requests; can go down or rotate keys."""

    def __init__(self, clock: Callable[[], float], alg: str = "RS256"):
        self.clock = clock
        self.alg = alg
        self.keys: list[tuple[str, Any]] = []
        self.requests: dict[str, int] = {}
        self.down = False
        self.lock = threading.Lock()
        self.rotate()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with issuer.lock:
                    issuer.requests[self.path] = issuer.requests.get(self.path, 0) + 1
                if issuer.down:
                    return self._send(503, b'{"error":"down"}')
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/keys", "id_token_signing_alg_values_supported": [issuer.alg]}
                    return self._send(200, json.dumps(body).encode())
                if self.path == "/keys":
                    return self._send(200, json.dumps(issuer.jwks()).encode())
                self._send(404, b"{}")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def new_key(self) -> Any:
        return _next_key(self.alg)

    def rotate(self) -> str:
        """A new signing key, published in place of the old one (as a cluster's issuer does); its kid."""
        key = self.new_key()
        kid = public_jwk(key.public_key(), self.alg)["kid"]
        self.keys = [(kid, key)]
        return kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(key.public_key(), self.alg) for _, key in self.keys]}

    def count(self, path: str) -> int:
        return self.requests.get(path, 0)

    def sign(self, claims: dict[str, Any], alg: str | None = None, key: Any = None, kid: str | None = None) -> str:
        """Claims signed by the current key (or `key`); None-valued claims are dropped."""
        current_kid, current_key = self.keys[0]
        claims = {"iss": self.url, **{k: v for k, v in claims.items() if v is not None}}
        return jwt.encode(claims, key or current_key, algorithm=alg or self.alg, headers={"kid": kid or current_kid})

    def times(self, lifetime: int = 3600, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        return {"iat": now, "nbf": now, "exp": now + lifetime, **overrides}

    def kubernetes_token(self, audience: str | list[str], namespace: str = "prod", name: str = "billing", **overrides: Any) -> str:
        """A projected service-account token (`serviceAccountToken` volume source, audience set)."""
        claims = {
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": audience if isinstance(audience, list) else [audience],
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": str(uuid.uuid4())},
                "pod": {"name": f"{name}-7d9c5b8f6-x2x4k", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": name, "uid": str(uuid.uuid4())},
            },
            **self.times(),
        }
        claims.update(overrides)
        return self.sign(claims)

    def github_token(self, audience: str, repository: str = "acme/billing", ref: str = "refs/heads/main", **overrides: Any) -> str:
        """A GitHub Actions OIDC token for a workflow run (`id-token: write`)."""
        owner = repository.split("/")[0]
        claims = {
            "jti": str(uuid.uuid4()),
            "sub": f"repo:{repository}:ref:{ref}",
            "aud": audience,
            "ref": ref,
            "sha": secrets.token_hex(20),
            "repository": repository,
            "repository_owner": owner,
            "repository_owner_id": "1234567",
            "repository_id": "7654321",
            "repository_visibility": "private",
            "run_id": "5512345678",
            "run_number": "42",
            "run_attempt": "1",
            "actor": "octocat",
            "actor_id": "583231",
            "workflow": "deploy",
            "workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
            "event_name": "push",
            "ref_type": "branch",
            "environment": "production",
            "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
            "runner_environment": "github-hosted",
            **self.times(lifetime=300),
        }
        claims.update(overrides)
        return self.sign(claims)

    def spiffe_token(self, audience: str, spiffe_id: str = "spiffe://trust.domain/ns/prod/sa/billing", **overrides: Any) -> str:
        """A JWT-SVID: sub is the SPIFFE ID; no jti is required by the standard."""
        claims = {"sub": spiffe_id, "aud": [audience], **self.times(lifetime=300)}
        claims.update(overrides)
        return self.sign(claims)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
