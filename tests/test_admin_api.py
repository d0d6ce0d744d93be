"""The admin API (SPEC §3.2) in-process: every route's authorization, the client lifecycle with ETags,
pagination, federation rules, issuers and keys, and the audit lines naming the admin client."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib.jose import public_jwk
from tokendealer.app import create_app
from tokendealer.config import ConfigError

from .conftest import AUDIENCE, basic, fetch_token, make_config

ADMIN_AUDIENCE = "http://localhost:5000/admin"

# Every admin route, with a body that would be accepted by a caller allowed to make it.
ROUTES = [
    ("GET", "/admin/clients", None),
    ("POST", "/admin/clients", {"client_id": "new", "scopes": ["a"], "audiences": [AUDIENCE]}),
    ("GET", "/admin/clients/svc", None),
    ("PATCH", "/admin/clients/svc", {"token_ttl": 60}),
    ("DELETE", "/admin/clients/svc", None),
    ("POST", "/admin/clients/svc/rotate-secret", None),
    ("POST", "/admin/clients/svc/disable", None),
    ("POST", "/admin/clients/svc/enable", None),
    ("GET", "/admin/clients/svc/federation", None),
    ("POST", "/admin/clients/svc/federation", {"issuer": "https://issuer.example", "subject": "x"}),
    ("DELETE", "/admin/clients/svc/federation/fr_0", None),
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys/rotate", None),
    ("POST", "/admin/keys/prune", None),
    ("GET", "/admin/issuers", None),
    ("POST", "/admin/issuers", {"issuer": "https://issuer.example", "jwks": {"keys": []}}),
    ("DELETE", "/admin/issuers?issuer=https://issuer.example", None),
]


@pytest.fixture
def tokens(http, make_client):
    """Access tokens: admin, read-only, a wrong audience, and the right audience without an admin scope."""
    make_client("svc", scopes=("read",), audiences=(AUDIENCE,))
    _, admin = make_client("ops", scopes=("tokendealer:admin", "tokendealer:read"), audiences=(ADMIN_AUDIENCE, AUDIENCE))
    _, reader = make_client("auditor", scopes=("tokendealer:read",), audiences=(ADMIN_AUDIENCE,))
    _, plain = make_client("plain", scopes=("other",), audiences=(ADMIN_AUDIENCE,))

    def token(client_id, secret, **form):
        return fetch_token(http, client_id, secret, **form)["access_token"]

    return {
        "admin": token("ops", admin, audience=ADMIN_AUDIENCE),
        "admin_secret": admin,
        "read": token("auditor", reader),
        "wrong_audience": token("ops", admin, audience=AUDIENCE),
        "no_scope": token("plain", plain),
    }


def call(http, method, path, token=None, body=None, headers=None):
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    kwargs = {"json": body} if body is not None else {}
    return http.open(path, method=method, headers=headers, **kwargs)


def refusals(http, tokens, method, path, body) -> list[str]:
    """What is wrong with how one route treats tokens that must not pass (empty when all is right)."""
    wrong = []
    missing = call(http, method, path, body=body)
    if missing.status_code != 401 or missing.headers.get("WWW-Authenticate") != 'Bearer realm="tokendealer"':
        wrong.append(f"no token: {missing.status_code} {missing.headers.get('WWW-Authenticate')}")
    elif missing.get_json()["error"] != "invalid_token":
        wrong.append(f"no token: {missing.get_json()}")
    other = call(http, method, path, tokens["wrong_audience"], body)
    challenge = other.headers.get("WWW-Authenticate", "")
    if other.status_code != 401 or not challenge.startswith('Bearer realm="tokendealer", error="invalid_token"'):
        wrong.append(f"wrong audience: {other.status_code} {challenge}")
    elif "audience" not in other.get_json()["error_description"]:
        wrong.append(f"wrong audience: {other.get_json()}")
    unscoped = call(http, method, path, tokens["no_scope"], body)
    if unscoped.status_code != 403 or 'error="insufficient_scope"' not in unscoped.headers.get("WWW-Authenticate", ""):
        wrong.append(f"no admin scope: {unscoped.status_code} {unscoped.headers.get('WWW-Authenticate')}")
    if call(http, method, path, "not.a.token", body).status_code != 401:
        wrong.append("garbage token passed")
    if method != "GET":
        read_only = call(http, method, path, tokens["read"], body)
        if read_only.status_code != 403 or 'scope="tokendealer:admin"' not in read_only.headers.get("WWW-Authenticate", ""):
            wrong.append(f"read-only token: {read_only.status_code}")
    elif call(http, method, path, tokens["read"]).status_code not in (200, 404):
        wrong.append("a read token may not read")
    return wrong


def test_every_route_refuses_missing_wrong_audience_and_unscoped_tokens(http, tokens):
    """Each route of SPEC §3.2: no token, a token for another audience, a garbage token and a token without
    the admin scope (or with only tokendealer:read, for changes) are refused with RFC 6750 challenges."""
    failures = {f"{method} {path}": wrong for method, path, body in ROUTES if (wrong := refusals(http, tokens, method, path, body))}
    assert not failures
    assert call(http, "GET", "/admin/clients/svc", tokens["read"]).status_code == 200


def test_a_valid_token_without_the_scope_is_audited(http, tokens, config):
    call(http, "POST", "/admin/keys/rotate", tokens["read"])
    refused = [json.loads(line) for line in open(config.audit_log) if '"admin.refused"' in line]
    assert refused[-1]["client_id"] == "auditor" and refused[-1]["needed"] == "tokendealer:admin"


def test_a_token_also_meant_for_a_service_is_refused(http, tokens):
    """RFC 8707 lets a token name several resources; one naming the admin API and a service is refused."""
    form = {"resource": [ADMIN_AUDIENCE, AUDIENCE]}
    both = fetch_token(http, "ops", tokens["admin_secret"], **form)["access_token"]
    answer = call(http, "GET", "/admin/clients", both)
    assert answer.status_code == 401
    assert answer.get_json()["error_description"] == "token must be for the admin audience alone"


@pytest.mark.parametrize(
    "cnf", [{"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}, {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}]
)
def test_a_sender_constrained_token_is_refused_as_bearer(http, tokens, services, cnf):
    token, _ = services.tokens.issue(services.clients.get("ops"), [ADMIN_AUDIENCE], ["tokendealer:admin"], cnf=cnf)
    answer = call(http, "GET", "/admin/clients", token)
    assert answer.status_code == 401
    assert answer.get_json()["error"] == "invalid_token"


def test_client_lifecycle_through_the_api(http, tokens, config):
    admin = tokens["admin"]
    created = call(http, "POST", "/admin/clients", admin, {"client_id": "billing", "scopes": ["invoices:read"], "audiences": [AUDIENCE]})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    secret = body.pop("client_secret")
    assert created.headers["Location"] == "/admin/clients/billing"
    assert fetch_token(http, "billing", secret)["scope"] == "invoices:read"

    shown = call(http, "GET", "/admin/clients/billing", admin)
    assert "client_secret" not in shown.get_json()
    assert shown.headers["ETag"] == created.headers["ETag"]

    # A shown record sent back edited is accepted (read-only fields unchanged).
    edited = {**shown.get_json(), "scopes": ["invoices:read", "invoices:write"]}
    patched = call(http, "PATCH", "/admin/clients/billing", admin, edited, {"If-Match": shown.headers["ETag"]})
    assert patched.status_code == 200, patched.get_json()
    assert patched.get_json()["scopes"] == ["invoices:read", "invoices:write"]
    assert patched.headers["ETag"] != shown.headers["ETag"]
    # The same record sent back unchanged changes nothing, its ETag included.
    again = call(http, "PATCH", "/admin/clients/billing", admin, patched.get_json(), {"If-Match": patched.headers["ETag"]})
    assert again.status_code == 200 and again.headers["ETag"] == patched.headers["ETag"]

    # The other operator's stale ETag: 412; no ETag at all: 428.
    stale = call(http, "PATCH", "/admin/clients/billing", admin, {"token_ttl": 60}, {"If-Match": shown.headers["ETag"]})
    assert stale.status_code == 412
    assert stale.get_json()["error"] == "precondition_failed"
    assert call(http, "PATCH", "/admin/clients/billing", admin, {"token_ttl": 60}).status_code == 428
    assert call(http, "DELETE", "/admin/clients/billing", admin).status_code == 428
    assert call(http, "DELETE", "/admin/clients/billing", admin, headers={"If-Match": shown.headers["ETag"]}).status_code == 412

    rotated = call(http, "POST", "/admin/clients/billing/rotate-secret", admin, {"grace": 60})
    assert rotated.status_code == 200
    new_secret = rotated.get_json()["client_secret"]
    fetch_token(http, "billing", new_secret)
    fetch_token(http, "billing", secret)  # within the grace period

    assert call(http, "POST", "/admin/clients/billing/disable", admin).get_json()["enabled"] is False
    refused = http.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic("billing", new_secret))
    assert refused.status_code == 401
    enabled = call(http, "POST", "/admin/clients/billing/enable", admin)
    assert enabled.get_json()["enabled"] is True

    deleted = call(http, "DELETE", "/admin/clients/billing", admin, headers={"If-Match": enabled.headers["ETag"]})
    assert deleted.status_code == 204
    assert call(http, "GET", "/admin/clients/billing", admin).status_code == 404

    audit = [json.loads(line) for line in open(config.audit_log)]
    mine = [(e["event"], e["client_id"]) for e in audit if e.get("actor") == "ops" and e.get("via") == "admin_api"]
    assert mine == [
        ("client.created", "billing"),
        ("client.updated", "billing"),
        ("client.updated", "billing"),  # the unchanged PATCH: accepted and audited, nothing written
        ("client.secret_rotated", "billing"),
        ("client.disabled", "billing"),
        ("client.enabled", "billing"),
        ("client.deleted", "billing"),
    ]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"client_id": "x", "scopes": ["a"], "audiences": [AUDIENCE], "colour": "red"}, 400, "unknown field 'colour'"),
        ({"client_id": "x", "scopes": "a", "audiences": [AUDIENCE]}, 400, "must be a list of strings"),
        ({"client_id": "x", "scopes": ["a"], "audiences": []}, 400, "at least one --audience"),
        ({"client_id": "bad id", "scopes": ["a"], "audiences": [AUDIENCE]}, 400, "client name must match"),
        ({"scopes": ["a"], "audiences": [AUDIENCE]}, 400, "'client_id' is required"),
        ({"client_id": "x", "audiences": [AUDIENCE], "enabled": False}, 400, "'enabled' is set by the server"),
        ({"client_id": "x", "audiences": [AUDIENCE], "claims": {"sub": "me"}}, 400, "set by the server"),
        ({"client_id": "svc", "audiences": [AUDIENCE]}, 409, "already exists"),
        (["not", "an", "object"], 400, "JSON object"),
    ],
)
def test_bad_bodies_get_a_clear_error(http, tokens, body, status, text):
    answer = call(http, "POST", "/admin/clients", tokens["admin"], body)
    assert answer.status_code == status
    assert text in answer.get_json()["error_description"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [(b"{", "application/json"), (b"[" * 50000, "application/json"), (b"\xff\xfe", "application/json"), (b"a=b", "text/plain")],
)
def test_malformed_bodies_are_400(http, tokens, data, content_type):
    headers = {"Authorization": f"Bearer {tokens['admin']}", "Content-Type": content_type}
    answer = http.post("/admin/clients", data=data, headers=headers)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_request"


def test_secretless_and_keyed_clients_get_no_secret(http, tokens):
    answer = call(http, "POST", "/admin/clients", tokens["admin"], {"client_id": "wl", "audiences": [AUDIENCE], "no_secret": True})
    assert answer.status_code == 201
    assert "client_secret" not in answer.get_json()
    assert answer.get_json()["auth_method"] == "federated"


def test_lists_are_paged(http, tokens):
    admin = tokens["admin"]
    for n in range(5):
        call(http, "POST", "/admin/clients", admin, {"client_id": f"p{n}", "audiences": [AUDIENCE]})
    seen, path, pages = [], "/admin/clients?limit=3", 0
    while path:
        answer = call(http, "GET", path, admin)
        assert answer.status_code == 200
        body = answer.get_json()
        assert len(body["clients"]) <= 3
        seen += [c["client_id"] for c in body["clients"]]
        path = body["next"]
        if path:
            assert answer.headers["Link"] == f'<{path}>; rel="next"'
        pages += 1
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 9  # svc, ops, auditor, plain and p0..p4
    assert pages == 3
    assert call(http, "GET", "/admin/clients?limit=0", admin).status_code == 400
    assert call(http, "GET", "/admin/clients?cursor=%%%", admin).status_code == 400


def test_keys_rotate_and_prune_through_the_api(http, tokens, config, clock):
    admin = tokens["admin"]
    before = call(http, "GET", "/admin/keys", admin).get_json()["keys"]
    rotated = call(http, "POST", "/admin/keys/rotate", admin)
    assert rotated.status_code == 200
    assert rotated.get_json()["warnings"]  # the next key was published moments ago
    after = rotated.get_json()["keys"]
    assert next(k["kid"] for k in after if k["state"] == "active") == next(k["kid"] for k in before if k["state"] == "next")
    assert call(http, "POST", "/admin/keys/rotate", admin, {"now": "yes"}).status_code == 400
    clock.advance(config.max_token_ttl + config.leeway + 1)
    # The admin token itself has expired by now: a fresh one.
    secret = tokens["admin_secret"]
    admin = fetch_token(http, "ops", secret, audience=ADMIN_AUDIENCE)["access_token"]
    pruned = call(http, "POST", "/admin/keys/prune", admin)
    assert pruned.status_code == 200
    assert len(pruned.get_json()["pruned"]) == 1


def test_emergency_rotation_refuses_the_admin_token_signed_by_the_old_key(http, tokens):
    admin = tokens["admin"]
    assert call(http, "POST", "/admin/keys/rotate", admin, {"now": True}).status_code == 200
    answer = call(http, "GET", "/admin/keys", admin)
    assert answer.status_code == 401
    assert "key" in answer.get_json()["error_description"]


def test_a_revoked_or_disabled_admin_token_is_refused(http, tokens, make_client):
    admin = tokens["admin"]
    revoked = http.post("/oauth/revoke", data={"token": admin}, headers=basic("ops", tokens["admin_secret"]))
    assert revoked.status_code == 200
    assert call(http, "GET", "/admin/clients", admin).status_code == 401
    fresh = fetch_token(http, "ops", tokens["admin_secret"], audience=ADMIN_AUDIENCE)["access_token"]
    assert call(http, "GET", "/admin/clients", fresh).status_code == 200
    assert call(http, "POST", "/admin/clients/ops/disable", fresh).status_code == 200
    assert call(http, "GET", "/admin/clients", fresh).status_code == 401


def test_federation_rules_and_issuers(http, tokens):
    admin = tokens["admin"]
    jwks = {"keys": [public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), "ES256")]}
    added = call(http, "POST", "/admin/issuers", admin, {"issuer": "https://issuer.example", "jwks": jwks})
    assert added.status_code == 201, added.get_json()
    assert call(http, "GET", "/admin/issuers", admin).get_json()["issuers"][0]["issuer"] == "https://issuer.example"
    rule = call(http, "POST", "/admin/clients/svc/federation", admin, {"issuer": "https://issuer.example", "subject": "repo:org/app*"})
    assert rule.status_code == 201
    assert rule.get_json()["warnings"]  # the loose prefix
    rule_id = rule.get_json()["rule_id"]
    assert [r["rule_id"] for r in call(http, "GET", "/admin/clients/svc/federation", admin).get_json()["rules"]] == [rule_id]
    unknown = call(http, "POST", "/admin/clients/svc/federation", admin, {"issuer": "https://other.example", "subject": "x"})
    assert unknown.status_code == 400 and "not a trusted issuer" in unknown.get_json()["error_description"]
    assert call(http, "DELETE", f"/admin/clients/svc/federation/{rule_id}", admin).status_code == 204
    assert call(http, "DELETE", f"/admin/clients/svc/federation/{rule_id}", admin).status_code == 404
    removed = call(http, "DELETE", "/admin/issuers?issuer=https://issuer.example", admin)
    assert removed.status_code == 200
    assert call(http, "DELETE", "/admin/issuers?issuer=https://issuer.example", admin).status_code == 404


def test_failed_admin_authentication_is_throttled_per_address(tmp_path, clock, key_store):
    app = create_app(make_config(tmp_path, auth_failure_limit_per_address="3/minute"), clock=clock)
    http = app.test_client()
    statuses = [http.get("/admin/clients", headers={"Authorization": "Bearer x.y.z"}).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    app.extensions["tokendealer"].audit.close()


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        ({"admin_audience": "has space"}, "TOKENDEALER_ADMIN_AUDIENCE"),
        ({"admin_audience": "://x"}, "TOKENDEALER_ADMIN_AUDIENCE"),
        ({"admin_listen": "5001"}, "TOKENDEALER_ADMIN_LISTEN"),
        ({"admin_listen": "127.0.0.1:99999"}, "TOKENDEALER_ADMIN_LISTEN"),
        ({"admin_listen": "127.0.0.1:port"}, "TOKENDEALER_ADMIN_LISTEN"),
    ],
)
def test_admin_settings_are_validated(tmp_path, settings, text):
    with pytest.raises(ConfigError, match=text):
        make_config(tmp_path, **settings)


def test_admin_audience_defaults_under_the_issuer(tmp_path):
    assert make_config(tmp_path).management_audience == "http://localhost:5000/admin"
    assert make_config(tmp_path, admin_audience="urn:tokendealer:admin").management_audience == "urn:tokendealer:admin"
    assert make_config(tmp_path, admin_listen="[::1]:5001").admin_address == ("::1", 5001)


def test_openapi_documents_every_admin_route_and_registration(http, app):
    paths = http.get("/openapi.json").get_json()["paths"]
    documented = {(method.upper(), path) for path, item in paths.items() for method in item if method != "parameters"}
    served = {
        (method, rule.rule.replace("<", "{").replace(">", "}"))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/admin/", "/oauth/register"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert served and served <= documented
    assert {(m, p.partition("?")[0].replace("/svc", "/{client_id}").replace("/fr_0", "/{rule_id}")) for m, p, _ in ROUTES} <= documented


def test_rotation_with_an_unknown_algorithm_is_400(http, tokens):
    answer = call(http, "POST", "/admin/keys/rotate", tokens["admin"], {"alg": "HS256"})
    assert answer.status_code == 400
    assert "alg must be one of" in answer.get_json()["error_description"]


def test_with_a_separate_admin_listener_each_side_serves_only_its_own(tmp_path, clock, key_store):
    config = make_config(tmp_path, admin_listen="127.0.0.1:5001")
    public = create_app(config, clock=clock, listener="public")
    admin = create_app(config, clock=clock, listener="admin")
    hidden = public.test_client().get("/admin/clients")
    assert hidden.status_code == 404 and hidden.get_json()["error"] == "not_found"
    assert public.test_client().get("/admin").status_code == 404
    assert public.test_client().get("/healthz").status_code == 200
    assert admin.test_client().get("/admin/clients").status_code == 401  # served: it asks for a token
    assert admin.test_client().post("/oauth/token", data={"grant_type": "client_credentials"}).status_code == 404
    assert admin.test_client().get("/.well-known/jwks.json").status_code == 404
    assert admin.test_client().get("/readyz").status_code == 200
    for app in (public, admin):
        app.extensions["tokendealer"].audit.close()


@pytest.mark.parametrize("grace", [10**400, 10**20])
def test_rotate_secret_grace_beyond_any_sensible_time_is_a_400(http, tokens, grace):
    """An unbounded `grace` overflowed the timestamp arithmetic (500), or kept the old secret valid for ever."""
    answer = call(http, "POST", "/admin/clients/svc/rotate-secret", tokens["admin"], {"grace": grace})
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert "grace" in answer.get_json()["error_description"]
