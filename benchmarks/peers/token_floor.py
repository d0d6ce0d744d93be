"""The irreducible cost of a token response, as a bare WSGI app: the floor TokenDealer is measured against.

Per request it does only what any client-credentials token response needs: read and parse the form,
HMAC-check the client secret (HTTP Basic) against a stored HMAC, build the RFC 9068 claims with a random
jti, sign ES256 with PyJWT using a key parsed once at start-up, and answer JSON with the no-store headers.
No framework, no database, no logs, no metrics. Run by peers.py on granian with the worker settings of
`tokendealer serve`.

Environment: FLOOR_CLIENT_ID and FLOOR_SECRET (the one client), FLOOR_AUDIENCE.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "http://127.0.0.1"
PEPPER = secrets.token_bytes(32)
HEADERS_OK = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache")]
dumps = json.JSONEncoder(separators=(",", ":")).encode


def _mac(secret: str) -> bytes:
    return hmac.new(PEPPER, secret.encode(), hashlib.sha256).digest()


def create_app() -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    client_id = os.environ.get("FLOOR_CLIENT_ID", "bench")
    stored = _mac(os.environ["FLOOR_SECRET"])
    audience = os.environ.get("FLOOR_AUDIENCE", "https://api.example.com")
    key = ec.generate_private_key(ec.SECP256R1())
    jwt_headers = {"typ": "at+jwt", "kid": "floor"}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] != "/oauth/token":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status":"ok"}']
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        form = parse_qs(body.decode(), keep_blank_values=True)
        claimed, _, secret = base64.b64decode(environ.get("HTTP_AUTHORIZATION", "")[6:]).decode().partition(":")
        if unquote_plus(claimed) != client_id or not hmac.compare_digest(_mac(unquote_plus(secret)), stored):
            start_response("401 Unauthorized", HEADERS_OK)
            return [b'{"error":"invalid_client"}']
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": client_id,
            "client_id": client_id,
            "aud": form.get("audience", [audience])[0],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": secrets.token_urlsafe(18),
            "scope": form.get("scope", [""])[0],
        }
        token = jwt.encode(claims, key, algorithm="ES256", headers=jwt_headers)
        payload = dumps({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": claims["scope"]}).encode()
        start_response("200 OK", [*HEADERS_OK, ("Content-Length", str(len(payload)))])
        return [payload]

    return app
