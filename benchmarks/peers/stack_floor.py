"""The floor of TokenDealer's library stack: the fewest lines that issue a real token with the same libraries.

Flask parses the form, SQLAlchemy Core reads the client's row from SQLite, hmac compares the secret's
HMAC-SHA256, PyJWT (cryptography) signs an ES256 JWT. Nothing of TokenDealer is imported. Used for memory:
whatever a worker of this app holds, a TokenDealer worker cannot go below.

Environment: FLOOR_DATABASE (a SQLite file path), FLOOR_SECRET (the secret of client `bench`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, jsonify, request

PEPPER = b"stack-floor"
CLIENTS = sa.Table(
    "clients", sa.MetaData(), sa.Column("client_id", sa.String(64), primary_key=True), sa.Column("secret_hash", sa.String(64))
)


def _hash(secret: str) -> str:
    return hmac.new(PEPPER, secret.encode(), hashlib.sha256).hexdigest()


def create_app() -> Flask:
    engine = sa.create_engine(f"sqlite:///{os.environ['FLOOR_DATABASE']}", connect_args={"timeout": 5})
    with engine.begin() as conn:  # every worker runs this at once: IF NOT EXISTS, OR IGNORE
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS clients (client_id VARCHAR(64) PRIMARY KEY, secret_hash VARCHAR(64))")
        conn.execute(sa.insert(CLIENTS).prefix_with("OR IGNORE").values(client_id="bench", secret_hash=_hash(os.environ["FLOOR_SECRET"])))
    key = ec.generate_private_key(ec.SECP256R1())
    app = Flask("floor")

    @app.post("/oauth/token")
    def token():
        client_id, _, secret = base64.b64decode(request.headers.get("Authorization", "")[6:]).decode().partition(":")
        with engine.connect() as conn:
            stored = conn.execute(sa.select(CLIENTS.c.secret_hash).where(CLIENTS.c.client_id == client_id)).scalar()
        if stored is None or not hmac.compare_digest(stored, _hash(secret)):
            return jsonify(error="invalid_client"), 401
        now = int(time.time())
        claims = {"iss": "floor", "sub": client_id, "aud": request.form["audience"], "iat": now, "exp": now + 300}
        claims |= {"jti": uuid.uuid4().hex, "scope": request.form.get("scope", "")}
        access_token = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "at+jwt"})
        return jsonify(access_token=access_token, token_type="Bearer", expires_in=300, scope=claims["scope"])

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app
