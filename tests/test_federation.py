"""Workload identity federation (SPEC §3 "More grants", §4.1) against a real external issuer on loopback
(tests/workload_issuer.py): federated client authentication and the JWT bearer grant, on the same rules."""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
import secrets
import time
import tracemalloc

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization

from client_lib.jose import public_jwk
from tokendealer import federation
from tokendealer.app import create_app
from tokendealer.federation import RuleStore, claim_at, value_matches
from tokendealer.issuers import IssuerKeys, IssuerStore, TrustedIssuer, discovered

from .conftest import AUDIENCE, REDIS_URL, initialise, make_config
from .workload_issuer import WorkloadIssuer

ISSUER = "http://localhost:5000"  # this server's issuer: the default audience of a rule
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture
def k8s(clock):
    issuer = WorkloadIssuer(clock)
    yield issuer
    issuer.close()


@pytest.fixture
def federate(services):
    """Trust an issuer (through its discovery) and add a rule: federate(client_id, issuer_url, subject, ...)."""
    issuers = IssuerStore(services.engine)
    rules = RuleStore(services.engine)

    def _federate(client_id, issuer, subject, audience=ISSUER, conditions=(), single_use=False):
        if issuers.get(issuer) is None:
            issuers.add(issuer)
        return rules.add(services.clients, issuers, client_id, issuer, subject, audience, conditions, single_use)

    return _federate


@pytest.fixture
def billing(registry, federate, k8s):
    """A secretless client trusted for the prod/billing service account of the cluster issuer."""
    registry.create("billing", scopes=["invoices:read"], audiences=[AUDIENCE], no_secret=True)
    return federate("billing", k8s.url, "system:serviceaccount:prod:billing", conditions=["kubernetes.io.namespace=prod"])


def federated_app(tmp_path, k8s, subject="system:serviceaccount:prod:billing", **settings):
    """A server of its own (for settings the shared `app` does not have) with the billing client federated."""
    config = make_config(tmp_path, **settings)
    initialise(config, k8s.clock)
    app = create_app(config, clock=k8s.clock)
    services = app.extensions["tokendealer"]
    services.clients.create("billing", scopes=["read"], audiences=[AUDIENCE], no_secret=True)
    issuers = IssuerStore(services.engine)
    issuers.add(k8s.url)
    RuleStore(services.engine).add(services.clients, issuers, "billing", k8s.url, subject, ISSUER)
    return app.test_client()


def authenticate(http, assertion, client_id="billing", **form):
    return http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            **form,
        },
    )


def bearer(http, assertion, **form):
    return http.post("/oauth/token", data={"grant_type": JWT_BEARER, "assertion": assertion, **form})


def claims_of(response):
    assert response.status_code == 200, response.get_json()
    return jwt.decode(response.get_json()["access_token"], options={"verify_signature": False})


def audit_lines(config):
    return [json.loads(line) for line in open(config.audit_log)]


# ---- both ways in ---------------------------------------------------------------------------------


def test_kubernetes_projected_token_authenticates_the_client(http, billing, k8s, config):
    token = k8s.kubernetes_token(ISSUER)
    claims = claims_of(authenticate(http, token))
    assert claims["sub"] == claims["client_id"] == "billing"
    assert claims["aud"] == AUDIENCE and claims["scope"] == "invoices:read"
    issued = [e for e in audit_lines(config) if e["event"] == "token.issued"][-1]
    assert issued["auth_method"] == "federated"
    assert issued["issuer"] == k8s.url and issued["federation_rule"] == billing.rule_id
    assert issued["external_subject"] == "system:serviceaccount:prod:billing"
    assert token not in open(config.audit_log).read()


def test_metrics_name_the_issuer_and_rule(http, billing, k8s, services):
    claims_of(authenticate(http, k8s.kubernetes_token(ISSUER)))
    text = services.metrics.render().decode()
    assert f'tokendealer_federated_tokens_issued_total{{client_id="billing",issuer="{k8s.url}",rule_id="{billing.rule_id}"}} 1.0' in text


def test_jwt_bearer_grant_the_rule_names_the_client(http, billing, k8s):
    claims = claims_of(bearer(http, k8s.kubernetes_token(ISSUER), scope="invoices:read"))
    assert claims["client_id"] == "billing"


def test_same_projected_token_reused_for_many_requests(http, billing, k8s):
    token = k8s.kubernetes_token(ISSUER)
    for _ in range(10):
        claims_of(authenticate(http, token))
        claims_of(bearer(http, token))


def test_federated_authentication_at_introspection_and_revocation(http, billing, k8s):
    token = k8s.kubernetes_token(ISSUER)
    access = authenticate(http, token).get_json()["access_token"]
    form = {"client_id": "billing", "client_assertion_type": ASSERTION_TYPE, "client_assertion": token, "token": access}
    assert http.post("/oauth/introspect", data=form).get_json()["active"] is True
    assert http.post("/oauth/revoke", data=form).status_code == 200
    assert http.post("/oauth/introspect", data=form).get_json()["active"] is False
    assert http.post("/oauth/introspect", data={**form, "client_id": "other"}).status_code == 401


def test_several_matching_clients_is_invalid_grant_never_a_silent_pick(http, registry, billing, federate, k8s):
    registry.create("billing-copy", scopes=["invoices:read"], audiences=[AUDIENCE], no_secret=True)
    federate("billing-copy", k8s.url, "system:serviceaccount:prod:*")
    token = k8s.kubernetes_token(ISSUER)
    response = bearer(http, token)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"
    assert "several clients (billing, billing-copy)" in response.get_json()["error_description"]
    # Naming one is not a silent pick; client authentication names its client anyway.
    assert claims_of(bearer(http, token, client_id="billing-copy"))["client_id"] == "billing-copy"
    assert claims_of(authenticate(http, token, client_id="billing-copy"))["client_id"] == "billing-copy"


def test_jwt_bearer_grant_takes_no_client_authentication(http, billing, k8s):
    response = bearer(http, k8s.kubernetes_token(ISSUER), client_secret="x", client_id="billing")
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    assert bearer(http, "").get_json()["error"] == "invalid_request"


def test_github_actions_rule_with_conditions(http, registry, federate, clock):
    github = WorkloadIssuer(clock)
    try:
        registry.create("deployer", scopes=["deploy"], audiences=[AUDIENCE], no_secret=True)
        federate(
            "deployer",
            github.url,
            "repo:acme/billing:ref:refs/heads/main",
            conditions=["repository_owner=acme", "environment=production", "ref=refs/heads/*"],
        )
        assert claims_of(authenticate(http, github.github_token(ISSUER), client_id="deployer"))["sub"] == "deployer"
        wrong_env = github.github_token(ISSUER, environment="staging")
        response = authenticate(http, wrong_env, client_id="deployer")
        assert response.status_code == 401 and "condition environment" in response.get_json()["error_description"]
        assert bearer(http, wrong_env).get_json()["error"] == "invalid_grant"
    finally:
        github.close()


def test_glob_stays_within_a_path_segment(http, registry, federate, clock):
    github = WorkloadIssuer(clock)
    try:
        registry.create("ci", scopes=["deploy"], audiences=[AUDIENCE], no_secret=True)
        federate("ci", github.url, "repo:acme/*", conditions=["ref=refs/heads/*"])
        assert authenticate(http, github.github_token(ISSUER, ref="refs/heads/release"), client_id="ci").status_code == 200
        assert authenticate(http, github.github_token(ISSUER, ref="refs/heads/feature/x"), client_id="ci").status_code == 401
    finally:
        github.close()


def test_spiffe_jwt_svid_with_a_subject_prefix(http, registry, federate, clock):
    spire = WorkloadIssuer(clock, alg="ES256")
    try:
        registry.create("prod-workloads", scopes=["read"], audiences=[AUDIENCE], no_secret=True)
        federate("prod-workloads", spire.url, "spiffe://trust.domain/ns/prod/sa/*")
        assert authenticate(http, spire.spiffe_token(ISSUER), client_id="prod-workloads").status_code == 200
        staging = spire.spiffe_token(ISSUER, spiffe_id="spiffe://trust.domain/ns/staging/sa/billing")
        assert authenticate(http, staging, client_id="prod-workloads").status_code == 401
    finally:
        spire.close()


# ---- refusals -----------------------------------------------------------------------------------


def _hmac_with_public_key(k8s):
    pem = k8s.keys[0][1].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": k8s.keys[0][0], "typ": "JWT"}
    claims = {
        "iss": k8s.url,
        "sub": "system:serviceaccount:prod:billing",
        "aud": [ISSUER],
        **k8s.times(),
        "kubernetes.io": {"namespace": "prod"},
    }

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())


REFUSALS = {
    "wrong subject": lambda k8s: k8s.kubernetes_token(ISSUER, name="payroll"),
    "wrong audience": lambda k8s: k8s.kubernetes_token("https://someone-else"),
    "also meant for another party": lambda k8s: k8s.kubernetes_token([ISSUER, "https://someone-else"]),
    "wrong condition": lambda k8s: k8s.kubernetes_token(ISSUER, **{"kubernetes.io": {"namespace": "staging"}}),
    "expired": lambda k8s: k8s.kubernetes_token(ISSUER, **k8s.times(iat=int(k8s.clock()) - 7200, exp=int(k8s.clock()) - 60)),
    "over-long lifetime": lambda k8s: k8s.kubernetes_token(ISSUER, exp=int(k8s.clock()) + 25 * 3600),
    "over-long without iat": lambda k8s: k8s.kubernetes_token(ISSUER, iat=None, exp=int(k8s.clock()) + 25 * 3600),
    "not yet valid": lambda k8s: k8s.kubernetes_token(ISSUER, nbf=int(k8s.clock()) + 600),
    "alg none": lambda k8s: jwt.encode(
        {"iss": k8s.url, "sub": "system:serviceaccount:prod:billing", "aud": ISSUER}, None, algorithm="none"
    ),
    "hmac with the public key": _hmac_with_public_key,
    "unknown key": lambda k8s: k8s.sign({"sub": "system:serviceaccount:prod:billing", "aud": [ISSUER], **k8s.times()}, key=k8s.new_key()),
    "known kid, other key": lambda k8s: k8s.sign(
        {"sub": "system:serviceaccount:prod:billing", "aud": [ISSUER], **k8s.times()}, key=k8s.new_key(), kid=k8s.keys[0][0]
    ),
    "not a JWT": lambda k8s: "http://x.y.z",
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_both_ways_in(http, billing, k8s, case):
    token = REFUSALS[case](k8s)
    response = authenticate(http, token)
    assert response.status_code in (400, 401), response.get_json()
    assert response.get_json()["error"] in ("invalid_client", "invalid_request")
    response = bearer(http, token)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant", response.get_json()


MISSING = object()


def _with_times(k8s, **times):
    """A Kubernetes-shaped token of the trusted issuer with these time claims as given: a JSON null where None,
    and without the claim where it is MISSING."""
    claims = {"iss": k8s.url, "sub": "system:serviceaccount:prod:billing", "aud": [ISSUER], "kubernetes.io": {"namespace": "prod"}}
    claims.update(k8s.times())
    for name, value in times.items():
        if value is MISSING:
            del claims[name]
        else:
            claims[name] = value
    kid, key = k8s.keys[0]
    return jwt.encode(claims, key, algorithm=k8s.alg, headers={"kid": kid})


@pytest.mark.parametrize(
    "times, why",
    [
        ({"exp": "4102444800"}, "exp is not a number"),
        ({"exp": True}, "exp is not a number"),
        ({"exp": None}, "exp is not a number"),
        ({"exp": [1]}, "exp is not a number"),
        ({"iat": "now"}, "iat is not a number"),
        ({"nbf": None}, "nbf is not a number"),
        ({"nbf": False, "exp": "x"}, "exp is not a number"),  # exp, iat, nbf: the first one told
        ({"exp": MISSING}, "lacks the exp claim"),
        ({"exp": MISSING, "iat": MISSING, "nbf": MISSING}, "lacks the exp claim"),
        ({"iat": 4102444800, "exp": 4102444900}, "iat is in the future"),
        ({"nbf": 4102444800}, "not valid yet"),
    ],
)
def test_time_claims_must_be_numbers_and_exp_present(http, billing, k8s, times, why):
    token = _with_times(k8s, **times)
    response = authenticate(http, token)
    assert response.status_code == 401 and why in response.get_json()["error_description"], response.get_json()
    response = bearer(http, token)
    assert response.status_code == 400 and why in response.get_json()["error_description"], response.get_json()


def test_iat_and_nbf_may_be_absent(http, billing, k8s):
    assert authenticate(http, _with_times(k8s, iat=MISSING, nbf=MISSING)).status_code == 200
    assert authenticate(http, _with_times(k8s, nbf=MISSING, iat=1.5 + int(k8s.clock()), exp=3600.5 + int(k8s.clock()))).status_code == 200


def test_wrong_issuer_is_refused(http, billing, clock):
    stranger = WorkloadIssuer(clock)
    try:
        token = stranger.kubernetes_token(ISSUER)
        response = authenticate(http, token)
        assert response.status_code == 401 and "not a trusted issuer" in response.get_json()["error_description"]
        assert bearer(http, token).get_json()["error"] == "invalid_grant"
        assert stranger.count("/keys") == 0  # an untrusted issuer is never fetched from
    finally:
        stranger.close()


def test_refusal_descriptions_say_why(http, billing, k8s):
    assert "wrong subject" in authenticate(http, REFUSALS["wrong subject"](k8s)).get_json()["error_description"]
    assert "wrong audience" in authenticate(http, REFUSALS["wrong audience"](k8s)).get_json()["error_description"]
    assert "longer than 86400" in authenticate(http, REFUSALS["over-long lifetime"](k8s)).get_json()["error_description"]
    assert "expired" in authenticate(http, REFUSALS["expired"](k8s)).get_json()["error_description"]


def test_disabled_client_is_refused(http, registry, billing, k8s):
    registry.set_enabled("billing", False)
    registry._forget("billing")
    assert authenticate(http, k8s.kubernetes_token(ISSUER)).status_code == 401


def test_rules_of_a_deleted_client_do_not_survive_it(http, registry, billing, k8s, services):
    registry.delete("billing")
    assert RuleStore(services.engine).for_client("billing") == []


def test_lifetime_bound_is_configurable(tmp_path, k8s):
    http = federated_app(tmp_path, k8s, federation_max_lifetime=600)
    assert authenticate(http, k8s.kubernetes_token(ISSUER, exp=int(k8s.clock()) + 600)).status_code == 200
    assert authenticate(http, k8s.kubernetes_token(ISSUER, exp=int(k8s.clock()) + 601)).status_code == 401


def test_removing_the_issuer_refuses_its_re_used_tokens(tmp_path, k8s):
    http = federated_app(tmp_path, k8s, client_cache_seconds=0)
    token = k8s.kubernetes_token(ISSUER)
    assert authenticate(http, token).status_code == 200  # its signature is now checked, for a minute
    IssuerStore(http.application.extensions["tokendealer"].engine).remove(k8s.url)
    response = authenticate(http, token)
    assert response.status_code == 401 and "not a trusted issuer" in response.get_json()["error_description"]


def test_an_expired_token_is_refused_before_its_signature_is_checked(http, billing, k8s, monkeypatch):
    """The cheap checks first: a token past its time is refused without an RSA verification (so forged
    expired tokens cost little), while what the rules ask is told only for a good signature."""
    checked = []
    monkeypatch.setattr(federation, "verify_signature", lambda *args: checked.append(args))
    expired = k8s.times(iat=int(k8s.clock()) - 7200, exp=int(k8s.clock()) - 60)
    forged = k8s.sign({"sub": "system:serviceaccount:prod:billing", "aud": [ISSUER], **expired}, key=k8s.new_key(), kid=k8s.keys[0][0])
    response = authenticate(http, forged)
    assert response.status_code == 401 and "expired" in response.get_json()["error_description"]
    assert checked == []


@pytest.mark.parametrize(
    "times",
    [
        {"exp": 10**400},  # its lifetime is exp - now, a float: past a float's range
        {"exp": 10**400, "iat": 1.5},
        {"exp": 10**400, "iat": -(10**400)},
        {"exp": 1.5e308, "iat": -1.5e308},  # inf - ... : a float overflow is inf, not an error
    ],
)
def test_unsigned_times_past_a_floats_range_are_refused_never_500(http, billing, k8s, times):
    """The times are checked before the signature, so a forged token's numbers reach them: any JSON number
    there is a refusal (401 or 400), never an OverflowError and a 500."""
    forged = k8s.sign({"sub": "system:serviceaccount:prod:billing", "aud": [ISSUER], **times}, key=k8s.new_key(), kid=k8s.keys[0][0])
    for response in (authenticate(http, forged), bearer(http, forged)):
        assert response.status_code in (400, 401), response.get_json()


def test_unknown_issuers_named_by_forged_tokens_hold_little(services):
    """The issuer a token names is looked up before its signature is checked (from any made-up token, at the
    JWT bearer grant): a flood of long unknown `iss` values is not remembered, while a short one still is."""
    store = IssuerStore(services.engine, cache_seconds=2.0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            assert store.get(f"https://{i}.example/" + "x" * 12000) is None
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 3_000_000, f"{held / 1e6:.0f} MB held by unknown issuers"  # ~12 MB before
    assert store.get("https://unknown.example") is None and "https://unknown.example" in store._cache


def test_a_token_seen_once_leaves_only_its_text_behind(http, billing, k8s, services, monkeypatch):
    """A new token's signature is checked once and only its text is remembered (nothing for the garbage
    collector to walk); admitted again, its parsed form is kept, so a re-used token is parsed at most twice
    (here once: the assertion parsed last is kept too) and verified once."""
    parsed, checked = [], []
    parse, verify = federation.parse_workload_token, federation.verify_signature
    monkeypatch.setattr(federation, "parse_workload_token", lambda token: parsed.append(1) or parse(token))
    monkeypatch.setattr(federation, "verify_signature", lambda *args: checked.append(1) or verify(*args))
    token = k8s.kubernetes_token(ISSUER)
    claims_of(authenticate(http, token))
    assert (len(parsed), len(checked)) == (1, 1)
    assert services.authenticator.federation._verified[token][2] is None
    for _ in range(5):
        claims_of(authenticate(http, token))
        claims_of(bearer(http, token))
    assert (len(parsed), len(checked)) == (1, 1)
    assert services.authenticator.federation._verified[token][2] is not None


def test_request_limits_reading_the_client_id_parse_a_new_token_once(tmp_path, k8s, monkeypatch):
    """With TOKENDEALER_RATELIMIT the claimed client id is read before and after authentication, each time from
    the assertion: it is parsed once all the same, and that is no second admission, so a new token still leaves
    only its text behind."""
    parsed = []
    parse = federation.parse_workload_token
    monkeypatch.setattr(federation, "parse_workload_token", lambda token: parsed.append(1) or parse(token))
    http = federated_app(tmp_path, k8s, ratelimit="1000/second")
    token = k8s.kubernetes_token(ISSUER)
    claims_of(authenticate(http, token))
    assert len(parsed) == 1
    assert http.application.extensions["tokendealer"].authenticator.federation._verified[token][2] is None


# ---- replay ---------------------------------------------------------------------------------------


def test_single_use_refuses_a_second_use_of_the_jti(http, registry, federate, k8s):
    registry.create("once", scopes=["read"], audiences=[AUDIENCE], no_secret=True)
    federate("once", k8s.url, "system:serviceaccount:prod:billing", single_use=True)
    token = k8s.kubernetes_token(ISSUER)
    assert authenticate(http, token, client_id="once").status_code == 200
    response = authenticate(http, token, client_id="once")
    assert response.status_code == 401 and "already used" in response.get_json()["error_description"]
    assert bearer(http, token).get_json()["error"] == "invalid_grant"
    assert authenticate(http, k8s.kubernetes_token(ISSUER), client_id="once").status_code == 200


def test_single_use_needs_a_jti(http, registry, federate, k8s):
    registry.create("once", scopes=["read"], audiences=[AUDIENCE], no_secret=True)
    federate("once", k8s.url, "system:serviceaccount:prod:billing", single_use=True)
    assert authenticate(http, k8s.kubernetes_token(ISSUER, jti=None), client_id="once").status_code == 401


def test_single_use_jti_is_kept_until_exp_plus_leeway(http, registry, federate, k8s, services, clock):
    registry.create("once", scopes=["read"], audiences=[AUDIENCE], no_secret=True)
    federate("once", k8s.url, "system:serviceaccount:prod:billing", single_use=True)
    token = k8s.kubernetes_token(ISSUER)
    assert authenticate(http, token, client_id="once").status_code == 200
    with services.engine.connect() as conn:
        (expires_at,) = conn.exec_driver_sql("SELECT expires_at FROM used_assertions").one()
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert expires_at == exp + services.config.leeway


# ---- the issuer's keys: flood, outage, rotation -----------------------------------------------------


def test_kid_flood_causes_bounded_fetches(http, billing, k8s):
    assert authenticate(http, k8s.kubernetes_token(ISSUER)).status_code == 200
    fetched = k8s.count("/keys")
    for _ in range(40):
        forged = k8s.sign({"sub": "system:serviceaccount:prod:billing", "aud": [ISSUER], **k8s.times()}, kid=secrets.token_hex(8))
        assert authenticate(http, forged).status_code in (401, 429)  # past 10 failures a minute: 429, still checked first
    assert k8s.count("/keys") - fetched <= 1
    assert k8s.count("/.well-known/openid-configuration") <= 2


def test_issuer_down_cached_keys_keep_working(http, billing, k8s):
    assert authenticate(http, k8s.kubernetes_token(ISSUER)).status_code == 200
    k8s.down = True
    for _ in range(3):
        assert authenticate(http, k8s.kubernetes_token(ISSUER)).status_code == 200
        assert bearer(http, k8s.kubernetes_token(ISSUER)).status_code == 200


def test_never_fetched_issuer_is_a_clear_refusal(http, billing, k8s):
    k8s.down = True
    response = authenticate(http, k8s.kubernetes_token(ISSUER))
    assert response.status_code == 401 and "keys could not be fetched" in response.get_json()["error_description"]
    response = bearer(http, k8s.kubernetes_token(ISSUER))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"
    k8s.down = False


@pytest.mark.slow  # waits on the real clock
def test_rotation_of_the_issuer_keys_is_picked_up_after_the_cooldown(tmp_path, k8s):
    http = federated_app(tmp_path, k8s, federation_key_cooldown=1)
    assert authenticate(http, k8s.kubernetes_token(ISSUER)).status_code == 200
    forged = k8s.sign({"sub": "x", "aud": [ISSUER], **k8s.times()}, kid="made-up")
    assert authenticate(http, forged).status_code == 401  # spends the refetch of this cooldown
    k8s.rotate()
    rotated = k8s.kubernetes_token(ISSUER)
    assert authenticate(http, rotated).status_code == 401  # within the cooldown: the new kid is not fetched yet
    time.sleep(1.1)
    assert authenticate(http, rotated).status_code == 200


class _Fetched:
    """A RemoteCache's answers, set by the test: the same object until the test puts a new one (a refetch)."""

    def __init__(self, values):
        self.values = values

    def get(self, url, force=False):
        return self.values[url]


def test_issuer_keys_follow_each_refetched_document_and_keep_nothing_for_unknown_kids(k8s):
    """IssuerKeys reads a discovery document and parses a JWK Set once per object the fetch caches hand out:
    a refetched document is checked again (its issuer, its jwks_uri), and unknown kids leave nothing behind."""
    issuer = TrustedIssuer(k8s.url)
    keys = IssuerKeys()
    document = {"issuer": k8s.url, "jwks_uri": k8s.url + "/keys"}
    keys.documents = _Fetched({issuer.discovery_url: document})
    other = {"keys": [public_jwk(k8s.new_key().public_key(), "RS256")]}
    keys.jwks = _Fetched({k8s.url + "/keys": k8s.jwks(), k8s.url + "/other": other})
    kid = k8s.keys[0][0]
    assert len(keys.candidates(issuer, kid, "RS256")) == 1
    assert keys.candidates(issuer, kid, "ES256") == ()
    for _ in range(50):
        assert keys.candidates(issuer, secrets.token_hex(8), "RS256") == ()
    assert [kid_alg for entry in keys._parsed.values() for kid_alg in entry[2]] == [(kid, "RS256")]
    keys.documents.values[issuer.discovery_url] = {**document, "jwks_uri": k8s.url + "/other"}
    assert keys.candidates(issuer, kid, "RS256") == ()
    assert len(keys.candidates(issuer, other["keys"][0]["kid"], "RS256")) == 1
    keys.documents.values[issuer.discovery_url] = {**document, "issuer": "https://someone-else"}
    with pytest.raises(ValueError, match="not exactly the trusted issuer"):
        keys.candidates(issuer, kid, "RS256")


@pytest.mark.parametrize(
    ("issuer", "told"),
    [
        ("https://oidc.example.com/", "names 'https://oidc.example.com/', not exactly"),
        ("x" * 100_000, "names 'xxxx"),  # only its start
        (json.loads("[" * 900 + "]" * 900), "names a JSON list"),  # named by its type, not echoed
        ({"a": 1}, "names a JSON dict"),
        (None, "names no issuer"),
    ],
)
def test_a_discovery_document_naming_another_issuer_is_told_safely(issuer, told):
    trusted = TrustedIssuer("https://oidc.example.com", allow_http=False)
    with pytest.raises(ValueError, match="not exactly the trusted issuer") as refused:
        discovered(trusted, {"issuer": issuer, "jwks_uri": "https://oidc.example.com/keys"})
    assert told in str(refused.value) and len(str(refused.value)) < 400


# ---- the failure throttle -------------------------------------------------------------------------


def test_failures_count_in_the_throttle_and_valid_tokens_still_pass(tmp_path, k8s):
    http = federated_app(tmp_path, k8s, auth_failure_limit="3/minute")
    wrong = k8s.kubernetes_token(ISSUER, name="payroll")
    statuses = [authenticate(http, wrong).status_code for _ in range(5)]
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429]
    assert bearer(http, wrong, client_id="billing").status_code == 429
    assert authenticate(http, k8s.kubernetes_token(ISSUER)).status_code == 200


# ---- matching rules -------------------------------------------------------------------------------


def test_dotted_paths_reach_keys_that_hold_dots():
    claims = {"kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "billing"}}, "a": {"b": 1}, "a.b": 1}
    assert claim_at(claims, "kubernetes.io.namespace") == "prod"
    assert claim_at(claims, "kubernetes.io.serviceaccount.name") == "billing"
    assert claim_at(claims, "a.b") == 1  # two ways, one value
    assert value_matches("x", claim_at({"a": {"b": 1}, "a.b": 2}, "a.b")) is False  # two ways, two values: no match
    assert value_matches("prod", claim_at(claims, "kubernetes.io.missing")) is False


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("prod", "prod", True),
        ("prod", "prod2", False),
        ("prod-*", "prod-eu", True),
        ("refs/heads/*", "refs/heads/main", True),
        ("refs/heads/*", "refs/heads/a/b", False),
        ("repo:acme/*:ref:refs/heads/main", "repo:acme/x:ref:refs/heads/main", True),
        ("repo:acme/*:ref:refs/heads/main", "repo:acme/x:pull_request:ref:refs/heads/main", False),
        ("v?", "v1", True),
        ("[a]", "a", False),
        ("true", True, True),
        ("3", 3, True),
        ("*", {"nested": 1}, False),
    ],
)
def test_glob_semantics(pattern, value, matches):
    assert value_matches(pattern, value) is matches


@pytest.fixture
def redis_url():
    """The machine's Redis (database 15); the test fails, never skips, when it is not running."""
    redis.Redis.from_url(REDIS_URL).ping()
    return REDIS_URL


def test_single_use_holds_across_instances_with_the_redis_replay_cache(tmp_path, redis_url):
    issuer = WorkloadIssuer(time.time)
    try:
        config = make_config(tmp_path, replay_cache=redis_url)
        initialise(config)
        a, b = create_app(config), create_app(config)
        services = a.extensions["tokendealer"]
        services.clients.create("once", scopes=["read"], audiences=[AUDIENCE], no_secret=True)
        issuers = IssuerStore(services.engine)
        issuers.add(issuer.url)
        subject = "system:serviceaccount:prod:billing"
        RuleStore(services.engine).add(services.clients, issuers, "once", issuer.url, subject, ISSUER, single_use=True)
        token = issuer.kubernetes_token(ISSUER)
        assert authenticate(a.test_client(), token, client_id="once").status_code == 200
        replay = authenticate(b.test_client(), token, client_id="once")
        assert replay.status_code == 401 and "already used" in replay.get_json()["error_description"]
    finally:
        issuer.close()
