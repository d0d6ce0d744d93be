"""The ceiling of the server stack: a Flask endpoint that parses the same form and returns JSON, no crypto."""

from __future__ import annotations

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask("bare")

    @app.post("/oauth/token")
    def token():
        form = request.form
        return jsonify(access_token="x" * 300, token_type="Bearer", expires_in=3600, scope=form.get("scope", ""))

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app
