"""RFC 8693 token exchange at POST /oauth/token: A calls B, B calls C for A; every refusal of issue 18."""

from __future__ import annotations

import json
from dataclasses import replace

import jwt
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tokendealer.app import create_app
from tokendealer.cli import main
from tokendealer.clients import ClientError
from tokendealer.config import Config, ConfigError
from tokendealer.tokens import TokenService

from .conftest import basic, fetch_token, initialise, make_config

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
B, C, D = "https://b.example", "https://c.example", "https://d.example"


@pytest.fixture
def chain(registry):
    """A (a plain caller of B), B (serves B, may exchange for C and D), C (serves C, may exchange for D)."""
    secrets = {}
    for name, kwargs in {
        "svc-a": dict(scopes=["orders:read", "invoices:read"], audiences=[B]),
        "svc-b": dict(scopes=["b:own"], audiences=[D], serves=[B], exchange_audiences=[C, D]),
        "svc-c": dict(scopes=["c:own"], audiences=[D], serves=[C], exchange_audiences=[D]),
        "svc-d": dict(scopes=["d:own"], audiences=[D]),
    }.items():
        _, secrets[name] = registry.create(name, **kwargs)
    return secrets


def exchange(http, client_id, secret, subject_token, **form):
    data = {"grant_type": EXCHANGE, "subject_token": subject_token, "subject_token_type": ACCESS_TOKEN, **form}
    return http.post("/oauth/token", data=data, headers=basic(client_id, secret))


def claims_of(token):
    return jwt.decode(token, options={"verify_signature": False})


def introspect(http, chain, token):
    response = http.post("/oauth/introspect", data={"token": token}, headers=basic("svc-d", chain["svc-d"]))
    assert response.status_code == 200
    return response.get_json()


def token_of_a(http, chain, scope="orders:read invoices:read"):
    return fetch_token(http, "svc-a", chain["svc-a"], scope=scope)["access_token"]


def refused(response, error):
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == error, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"


# ---- what is issued --------------------------------------------------------------------------------------


def test_b_exchanges_a_token_for_c_keeping_the_caller_and_adding_act(http, chain, clock):
    subject = token_of_a(http, chain)
    clock.advance(600)
    response = exchange(http, "svc-b", chain["svc-b"], subject, audience=C, scope="invoices:read")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "invoices:read"
    assert response.headers["Cache-Control"] == "no-store"
    claims, original = claims_of(body["access_token"]), claims_of(subject)
    assert (claims["sub"], claims["client_id"], claims["aud"]) == ("svc-a", "svc-a", C)
    assert claims["act"] == {"sub": "svc-b"}
    assert claims["exp"] <= original["exp"]
    assert body["expires_in"] == original["exp"] - claims["iat"] == 3000
    assert claims["jti"] != original["jti"]
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    assert introspect(http, chain, body["access_token"])["act"] == {"sub": "svc-b"}


def test_scope_absent_grants_the_subject_scopes_the_caller_still_holds(http, chain, registry):
    subject = token_of_a(http, chain)
    assert exchange(http, "svc-b", chain["svc-b"], subject, audience=C).get_json()["scope"] == "orders:read invoices:read"
    registry.update("svc-a", scopes=["invoices:read"])
    assert exchange(http, "svc-b", chain["svc-b"], subject, audience=C).get_json()["scope"] == "invoices:read"


def test_resource_parameter_and_sole_exchange_audience_default(http, chain):
    subject = token_of_a(http, chain)
    assert claims_of(exchange(http, "svc-b", chain["svc-b"], subject, resource=D).get_json()["access_token"])["aud"] == D
    refused(exchange(http, "svc-b", chain["svc-b"], subject), "invalid_request")  # B may exchange for C or D: name one
    via_c = exchange(http, "svc-b", chain["svc-b"], subject, audience=C).get_json()["access_token"]
    assert claims_of(exchange(http, "svc-c", chain["svc-c"], via_c).get_json()["access_token"])["aud"] == D


def test_a_chain_nests_act_and_keeps_the_caller(http, chain):
    to_c = exchange(http, "svc-b", chain["svc-b"], token_of_a(http, chain), audience=C, scope="invoices:read").get_json()
    to_d = exchange(http, "svc-c", chain["svc-c"], to_c["access_token"], audience=D).get_json()
    claims = claims_of(to_d["access_token"])
    assert (claims["sub"], claims["client_id"]) == ("svc-a", "svc-a")
    assert claims["act"] == {"sub": "svc-c", "act": {"sub": "svc-b"}}
    assert claims["scope"] == "invoices:read"
    assert introspect(http, chain, to_d["access_token"])["active"] is True


def test_client_extra_claims_of_the_caller_are_carried(http, registry, chain):
    registry.update("svc-a", claims={"tenant": "t1"})
    claims = claims_of(exchange(http, "svc-b", chain["svc-b"], token_of_a(http, chain), audience=C).get_json()["access_token"])
    assert claims["tenant"] == "t1"


def test_any_client_authentication_method_and_actor_token_of_the_client_itself(http, chain):
    subject = token_of_a(http, chain)
    own = fetch_token(http, "svc-b", chain["svc-b"])["access_token"]
    data = {
        "grant_type": EXCHANGE,
        "subject_token": subject,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "actor_token": own,
        "actor_token_type": ACCESS_TOKEN,
        "requested_token_type": ACCESS_TOKEN,
        "audience": C,
        "client_id": "svc-b",
        "client_secret": chain["svc-b"],
    }
    response = http.post("/oauth/token", data=data)
    assert response.status_code == 200, response.get_json()
    assert claims_of(response.get_json()["access_token"])["act"] == {"sub": "svc-b"}


def test_discovery_and_openapi_name_the_grant_and_its_parameters(http):
    metadata = http.get("/.well-known/oauth-authorization-server").get_json()
    assert EXCHANGE in metadata["grant_types_supported"]
    assert "client_credentials" in metadata["grant_types_supported"]
    form = http.get("/openapi.json").get_json()["paths"]["/oauth/token"]["post"]["requestBody"]["content"]
    properties = form["application/x-www-form-urlencoded"]["schema"]["properties"]
    assert {"subject_token", "subject_token_type", "actor_token", "actor_token_type", "requested_token_type"} <= set(properties)


# ---- refusals (issue 18, "Done when") ------------------------------------------------------------------------


def test_subject_token_not_meant_for_the_requester_is_invalid_grant(http, chain):
    subject = token_of_a(http, chain)  # aud B; C serves only C
    refused(exchange(http, "svc-c", chain["svc-c"], subject, audience=D), "invalid_grant")


def test_audience_outside_exchange_audiences_is_invalid_target(http, chain):
    subject = token_of_a(http, chain)
    refused(exchange(http, "svc-b", chain["svc-b"], subject, audience="https://elsewhere.example"), "invalid_target")
    refused(exchange(http, "svc-b", chain["svc-b"], subject, audience=C, resource="https://elsewhere.example"), "invalid_target")
    refused(exchange(http, "svc-b", chain["svc-b"], subject, resource="not-a-uri"), "invalid_target")


def test_scope_escalation_is_invalid_scope(http, chain):
    subject = token_of_a(http, chain, scope="orders:read")
    refused(exchange(http, "svc-b", chain["svc-b"], subject, audience=C, scope="invoices:read"), "invalid_scope")
    refused(exchange(http, "svc-b", chain["svc-b"], subject, audience=C, scope="b:own"), "invalid_scope")
    refused(exchange(http, "svc-b", chain["svc-b"], subject, audience=C, scope='bad"scope'), "invalid_scope")
    narrowed = exchange(http, "svc-b", chain["svc-b"], subject, audience=C).get_json()["access_token"]
    refused(exchange(http, "svc-c", chain["svc-c"], narrowed, audience=D, scope="orders:read invoices:read"), "invalid_scope")


def test_expired_subject_token_is_invalid_grant(http, chain, clock):
    subject = token_of_a(http, chain)
    clock.advance(3600)
    refused(exchange(http, "svc-b", chain["svc-b"], subject, audience=C), "invalid_grant")


def test_revoked_subject_token_is_invalid_grant(http, chain):
    subject = token_of_a(http, chain)
    assert http.post("/oauth/revoke", data={"token": subject}, headers=basic("svc-a", chain["svc-a"])).status_code == 200
    response = exchange(http, "svc-b", chain["svc-b"], subject, audience=C)
    refused(response, "invalid_grant")
    assert "revoked" in response.get_json()["error_description"]


def test_subject_token_of_a_disabled_client_is_invalid_grant(http, chain, registry):
    subject = token_of_a(http, chain)
    registry.set_enabled("svc-a", False)
    refused(exchange(http, "svc-b", chain["svc-b"], subject, audience=C), "invalid_grant")


def test_foreign_issuer_subject_tokens_are_invalid_grant(http, chain, services, tmp_path, clock):
    # Signed by this server's own key but naming another issuer.
    other_config = replace(services.config, issuer="https://other.example")
    other = TokenService(other_config, services.keys, services.clients, services.tokens.revocations, clock)
    same_key_other_iss, _ = other.issue(services.clients.get("svc-a"), [B], ["orders:read"])
    response = exchange(http, "svc-b", chain["svc-b"], same_key_other_iss, audience=C)
    refused(response, "invalid_grant")
    assert "issuer" in response.get_json()["error_description"]
    # Issued by another TokenDealer (its own keys) with this server's issuer name and the same client id.
    (tmp_path / "other").mkdir()
    foreign_config = make_config(tmp_path / "other")
    initialise(foreign_config, clock)
    foreign = create_app(foreign_config, clock=clock)
    foreign.extensions["tokendealer"].clients.create("svc-a", scopes=["orders:read"], audiences=[B])
    foreign_token, _ = foreign.extensions["tokendealer"].tokens.issue(foreign.extensions["tokendealer"].clients.get("svc-a"), [B], [])
    foreign.extensions["tokendealer"].engine.dispose()
    foreign.extensions["tokendealer"].audit.close()
    refused(exchange(http, "svc-b", chain["svc-b"], foreign_token, audience=C), "invalid_grant")
    refused(exchange(http, "svc-b", chain["svc-b"], "not.a.jwt", audience=C), "invalid_grant")


def test_depth_over_the_cap_is_invalid_request(http, registry):
    """Default cap 4: a token acted on by four services cannot be exchanged a fifth time."""
    secrets = {}
    for n in range(6):
        _, secrets[n] = registry.create(
            f"s{n}", scopes=["x"], audiences=[f"https://s{n + 1}"], serves=[f"https://s{n}"], exchange_audiences=[f"https://s{n + 1}"]
        )
    token = fetch_token(http, "s0", secrets[0])["access_token"]  # aud s1
    for n in range(1, 5):
        response = exchange(http, f"s{n}", secrets[n], token)
        assert response.status_code == 200, (n, response.get_json())
        token = response.get_json()["access_token"]
    assert [c for c in _actors(claims_of(token))] == ["s4", "s3", "s2", "s1"]
    response = exchange(http, "s5", secrets[5], token)
    refused(response, "invalid_request")
    assert "4 actors" in response.get_json()["error_description"]


def _actors(claims):
    out, act = [], claims.get("act")
    while act:
        out.append(act["sub"])
        act = act.get("act")
    return out


def test_depth_cap_is_configurable(tmp_path, clock):
    config = make_config(tmp_path, exchange_max_depth=1)
    initialise(config, clock)
    app = create_app(config, clock=clock)
    http, registry = app.test_client(), app.extensions["tokendealer"].clients
    _, a = registry.create("svc-a", scopes=["x"], audiences=[B])
    _, b = registry.create("svc-b", scopes=["x"], audiences=[C], serves=[B], exchange_audiences=[C])
    _, c = registry.create("svc-c", scopes=["x"], audiences=[D], serves=[C], exchange_audiences=[D])
    once = exchange(http, "svc-b", b, fetch_token(http, "svc-a", a)["access_token"]).get_json()["access_token"]
    refused(exchange(http, "svc-c", c, once), "invalid_request")
    app.extensions["tokendealer"].engine.dispose()
    app.extensions["tokendealer"].audit.close()


@pytest.mark.parametrize("value", ["0", "17", "-1", "four"])
def test_bad_depth_cap_stops_start_up_naming_the_variable(value):
    with pytest.raises(ConfigError, match="TOKENDEALER_EXCHANGE_MAX_DEPTH"):
        Config.load(environ={"TOKENDEALER_EXCHANGE_MAX_DEPTH": value})


def test_actor_token_of_another_client_is_invalid_request(http, chain):
    subject = token_of_a(http, chain)
    others = fetch_token(http, "svc-c", chain["svc-c"])["access_token"]
    form = {"audience": C, "actor_token": others, "actor_token_type": ACCESS_TOKEN}
    response = exchange(http, "svc-b", chain["svc-b"], subject, **form)
    refused(response, "invalid_request")
    assert "actor_token" in response.get_json()["error_description"]
    refused(exchange(http, "svc-b", chain["svc-b"], subject, **{**form, "actor_token": "garbage"}), "invalid_request")
    # The subject token itself is A's, not B's.
    refused(exchange(http, "svc-b", chain["svc-b"], subject, **{**form, "actor_token": subject}), "invalid_request")


@pytest.mark.parametrize(
    "form",
    [
        {"subject": ""},
        {"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"},
        {"subject_token_type": ""},
        {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"actor_token_type": ACCESS_TOKEN},  # without actor_token
    ],
)
def test_malformed_exchange_requests_are_invalid_request(http, chain, form):
    subject = form.pop("subject", token_of_a(http, chain))
    refused(exchange(http, "svc-b", chain["svc-b"], subject, audience=C, **form), "invalid_request")


def test_client_without_exchange_policy_is_unauthorized_client(http, chain):
    subject = token_of_a(http, chain)
    refused(exchange(http, "svc-d", chain["svc-d"], subject, audience=D), "unauthorized_client")


def test_unauthenticated_exchange_is_invalid_client(http, chain):
    response = exchange(http, "svc-b", "wrong", token_of_a(http, chain), audience=C)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


# ---- self-exchange: a client's own token -----------------------------------------------------------------


@pytest.fixture
def selfish(registry):
    """svc-s can get tokens for itself (S) and for E directly; it may exchange only for X."""
    _, secret = registry.create(
        "svc-s", scopes=["s:all"], audiences=["https://s", "https://e"], serves=["https://s"], exchange_audiences=["https://x"]
    )
    return secret


def test_own_token_is_not_exchanged_into_an_audience_outside_the_policy(http, selfish):
    own = fetch_token(http, "svc-s", selfish, audience="https://s")["access_token"]
    # Not even into an audience it could get directly: exchange is governed by --exchange-audience alone.
    refused(exchange(http, "svc-s", selfish, own, audience="https://e"), "invalid_target")
    refused(exchange(http, "svc-s", selfish, own, audience="https://nowhere"), "invalid_target")


def test_own_token_is_exchanged_where_the_policy_says_so(http, selfish):
    own = fetch_token(http, "svc-s", selfish, audience="https://s")["access_token"]
    response = exchange(http, "svc-s", selfish, own, audience="https://x")
    assert response.status_code == 200, response.get_json()
    claims = claims_of(response.get_json()["access_token"])
    assert (claims["sub"], claims["aud"], claims["act"], claims["scope"]) == ("svc-s", "https://x", {"sub": "svc-s"}, "s:all")


def test_own_token_for_another_audience_is_not_exchanged(http, selfish):
    own = fetch_token(http, "svc-s", selfish, audience="https://e")["access_token"]  # not meant for S
    refused(exchange(http, "svc-s", selfish, own, audience="https://x"), "invalid_grant")


# ---- derived tokens die with their subject -----------------------------------------------------------------


def test_revoking_the_subject_token_makes_the_whole_chain_inactive(http, chain):
    subject = token_of_a(http, chain)
    to_c = exchange(http, "svc-b", chain["svc-b"], subject, audience=C).get_json()["access_token"]
    to_d = exchange(http, "svc-c", chain["svc-c"], to_c, audience=D).get_json()["access_token"]
    assert introspect(http, chain, to_d)["active"] is True
    http.post("/oauth/revoke", data={"token": subject}, headers=basic("svc-a", chain["svc-a"]))
    assert introspect(http, chain, to_c) == {"active": False}
    assert introspect(http, chain, to_d) == {"active": False}
    verify = http.post("/verify_token", json={"access_token": to_d, "audience": D})
    assert verify.status_code == 400
    assert "exchanged from has been revoked" in verify.get_json()["error_description"]


def test_revoking_a_derived_token_leaves_its_subject_and_kills_its_children(http, chain):
    subject = token_of_a(http, chain)
    to_c = exchange(http, "svc-b", chain["svc-b"], subject, audience=C).get_json()["access_token"]
    to_d = exchange(http, "svc-c", chain["svc-c"], to_c, audience=D).get_json()["access_token"]
    # B obtained to_c, so B may revoke it (RFC 7009: the client it was issued to), though its client_id is A's.
    assert http.post("/oauth/revoke", data={"token": to_c}, headers=basic("svc-b", chain["svc-b"])).status_code == 200
    assert introspect(http, chain, to_c) == {"active": False}
    assert introspect(http, chain, to_d) == {"active": False}
    assert introspect(http, chain, subject)["active"] is True


def test_a_client_that_is_neither_caller_nor_actor_cannot_revoke(http, chain):
    to_c = exchange(http, "svc-b", chain["svc-b"], token_of_a(http, chain), audience=C).get_json()["access_token"]
    to_d = exchange(http, "svc-c", chain["svc-c"], to_c, audience=D).get_json()["access_token"]
    http.post("/oauth/revoke", data={"token": to_d}, headers=basic("svc-b", chain["svc-b"]))  # B is only an inner actor
    assert introspect(http, chain, to_d)["active"] is True


def test_disabling_an_actor_makes_the_tokens_it_obtained_inactive(http, chain, registry):
    to_c = exchange(http, "svc-b", chain["svc-b"], token_of_a(http, chain), audience=C).get_json()["access_token"]
    registry.set_enabled("svc-b", False)
    assert introspect(http, chain, to_c) == {"active": False}


def test_the_whole_chain_is_checked_in_one_revocation_query(http, chain, services):
    to_c = exchange(http, "svc-b", chain["svc-b"], token_of_a(http, chain), audience=C).get_json()["access_token"]
    to_d = exchange(http, "svc-c", chain["svc-c"], to_c, audience=D).get_json()["access_token"]
    statements = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(services.engine, "before_cursor_execute", record)
    try:
        services.tokens.validate(to_d)
    finally:
        sa.event.remove(services.engine, "before_cursor_execute", record)
    assert len([s for s in statements if "revoked_tokens" in s]) == 1


# ---- audit, metrics -------------------------------------------------------------------------------------------


def test_audit_records_subject_actor_chain_audience_and_scope_never_tokens(http, chain, config):
    subject = token_of_a(http, chain)
    to_c = exchange(http, "svc-b", chain["svc-b"], subject, audience=C, scope="invoices:read").get_json()["access_token"]
    exchange(http, "svc-c", chain["svc-c"], to_c, audience=D)
    exchange(http, "svc-c", chain["svc-c"], subject, audience=D)  # refused: not meant for C
    text = open(config.audit_log).read()
    lines = [json.loads(line) for line in text.splitlines()]
    exchanged = [line for line in lines if line["event"] == "token.exchanged"]
    assert exchanged[0]["subject"] == "svc-a"
    assert exchanged[0]["client_id"] == "svc-b"
    assert exchanged[0]["actors"] == ["svc-b"]
    assert exchanged[0]["audience"] == [C]
    assert exchanged[0]["scope"] == "invoices:read"
    assert exchanged[1]["actors"] == ["svc-c", "svc-b"]
    refusal = [line for line in lines if line["event"] == "token.refused"][-1]
    assert (refusal["error"], refusal["client_id"]) == ("invalid_grant", "svc-c")
    for token in (subject, to_c):
        assert token not in text
        assert token.split(".")[1] not in text


def test_exchanges_are_counted_per_requesting_client(http, chain):
    exchange(http, "svc-b", chain["svc-b"], token_of_a(http, chain), audience=C)
    exchange(http, "svc-b", chain["svc-b"], "garbage", audience=C)
    text = http.get("/metrics").get_data(as_text=True)
    assert 'client_id="svc-b"' in text


# ---- policy as data: store and command line ------------------------------------------------------------


def test_act_and_chain_claims_cannot_be_registered(registry):
    for name in ("act", "may_act", "exchanged_from"):
        with pytest.raises(ClientError, match="set by the server"):
            registry.create(f"x-{name}", scopes=["a"], audiences=[B], claims={name: {"sub": "admin"}})


def test_cli_serves_and_exchange_audience_on_create_update_show(tmp_path):
    env = {
        "TOKENDEALER_KEYS_DIR": str(tmp_path / "keys"),
        "TOKENDEALER_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'td.db'}",
        "TOKENDEALER_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    assert run("init").exit_code == 0
    created = run(
        "client", "create", "svc-b", "--scope", "x", "--audience", D, "--serves", B, "--exchange-audience", C, "--exchange-audience", D
    )
    assert created.exit_code == 0, created.output
    view = json.loads(created.output)
    assert (view["serves"], view["exchange_audiences"]) == ([B], [C, D])
    updated = run("client", "update", "svc-b", "--exchange-audience", "https://e.example")
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.output)["exchange_audiences"] == ["https://e.example"]  # replaced, not appended
    assert json.loads(updated.output)["serves"] == [B]  # untouched
    shown = json.loads(run("client", "show", "svc-b", "--json").output)
    assert (shown["serves"], shown["exchange_audiences"]) == ([B], ["https://e.example"])
    assert "exchange_audiences: ['https://e.example']" in run("client", "show", "svc-b").output
    bad = run("client", "update", "svc-b", "--serves", "has space")
    assert bad.exit_code == 1
    assert "invalid audience" in bad.output
