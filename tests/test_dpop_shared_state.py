"""DPoP across instances sharing PostgreSQL (and Redis): a proof spent at one instance is refused at the other,
and a nonce one instance hands out is accepted by the other (stateless, keyed by the shared pepper)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import AUDIENCE, basic, postgres_schema
from .test_dpop import proof
from .test_shared_state import redis_url, two_apps

__all__ = ["redis_url"]  # the fixture, for the Redis case

pytestmark = [pytest.mark.postgres]


def post(app, creds, dpop: str):
    return app.test_client().post("/oauth/token", data={"grant_type": "client_credentials"}, headers={**basic(*creds), "DPoP": dpop})


def register(app):
    client, secret = app.extensions["tokendealer"].clients.create("svc", scopes=["read"], audiences=[AUDIENCE])
    return client.client_id, secret


def dispose(*apps):
    for app in apps:
        app.extensions["tokendealer"].engine.dispose()


def test_a_proof_spent_at_one_instance_is_refused_at_the_other(tmp_path):
    spent_once(tmp_path)


def test_with_the_replay_cache_in_redis_too(tmp_path, redis_url):
    spent_once(tmp_path, replay_cache=redis_url)


def spent_once(tmp_path, **settings):
    key = ec.generate_private_key(ec.SECP256R1())
    with postgres_schema() as url:
        a, b = two_apps(tmp_path, url, **settings)
        creds = register(a)
        spent = proof(key, a.extensions["tokendealer"].clock())
        assert post(a, creds, spent).get_json()["token_type"] == "DPoP"
        replay = post(b, creds, spent)
        assert replay.status_code == 400 and replay.get_json()["error"] == "invalid_dpop_proof"
        assert "already used" in replay.get_json()["error_description"]
        dispose(a, b)


def test_a_nonce_from_one_instance_works_at_the_other(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    with postgres_schema() as url:
        a, b = two_apps(tmp_path, url, dpop_nonce=True)
        creds = register(a)
        now = a.extensions["tokendealer"].clock()
        asked = post(a, creds, proof(key, now))
        assert asked.status_code == 400 and asked.get_json()["error"] == "use_dpop_nonce"
        assert post(b, creds, proof(key, now, nonce=asked.headers["DPoP-Nonce"])).status_code == 200
        dispose(a, b)
