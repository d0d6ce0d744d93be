"""Mutual-TLS client authentication and certificate-bound tokens (RFC 8705), in process: the proxy header's
two formats, DN / SAN / key matching, the token endpoint on both HTTP paths, and client_lib's binding check."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, g
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_lib import CertificateMismatch, TokenVerifier, require_token
from client_lib.core.certificates import MAX_HEADER_LENGTH, CertificateError, PresentedCertificate, check_binding, from_header, load
from client_lib.core.credentials import Credentials
from client_lib.core.dpop import DPoPKey
from tokendealer.app import create_app
from tokendealer.clients import ClientError
from tokendealer.config import Config, ConfigError
from tokendealer.mtls import key_registered, san_matches, subject_matches

from .certificates import issue, make_ca, name, self_signed
from .conftest import AUDIENCE, FakeClock, basic, initialise, make_config

GRANT = {"grant_type": "client_credentials"}
PROXY = "10.0.0.7"
HEADER = "X-SSL-Client-Cert"
SUBJECT = "CN=billing,OU=payments,O=Example"
SPIFFE = "spiffe://example.org/ns/billing/sa/worker"


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(scope="module")
def billing(ca):
    """A CA-issued client certificate with the registered subject, a URI SAN and a DNS SAN."""
    return issue(ca, name(O="Example", OU="payments", CN="billing"), uris=(SPIFFE,), dns=("billing.example.org",))


def presented(cert) -> PresentedCertificate:
    return load(cert.der)


# ---- the proxy header: RFC 9440 and nginx's URL-encoded PEM ---------------------------------------------


def test_both_header_formats_give_the_same_certificate(billing):
    from_rfc9440 = from_header(billing.rfc9440())
    from_nginx = from_header(billing.nginx_escaped())
    assert from_rfc9440.der == from_nginx.der == billing.der
    assert from_rfc9440.thumbprint == from_nginx.thumbprint == load(billing.pem).thumbprint == load(billing.certificate).thumbprint
    assert len(from_rfc9440.thumbprint) == 43  # base64url of 32 bytes, no padding (RFC 8705 §3.1)


@pytest.mark.parametrize(
    "value",
    [
        ":not base64!:",
        ":" + "QUJD" + ":",  # base64 of something that is not DER
        "%2D%2D%2D%2D%2DBEGIN%20CERTIFICATE%2D%2D%2D%2D%2D%0Agarbage%0A%2D%2D%2D%2D%2DEND%20CERTIFICATE%2D%2D%2D%2D%2D",
        "-----BEGIN PRIVATE KEY-----",
        "just text",
        "%FF%FE",
        ":" + "A" * MAX_HEADER_LENGTH + ":",
        "",
    ],
)
def test_malformed_headers_raise_certificate_error(value):
    """Refused when read, or (bytes that decode but hold no certificate) when the certificate is first parsed."""
    with pytest.raises(CertificateError):
        from_header(value).certificate  # noqa: B018


# ---- what a certificate must show for each method ------------------------------------------------------


@pytest.mark.parametrize(
    "dn",
    [SUBJECT, "cn=billing ,  ou=PAYMENTS,o=example", "CN=Billing,OU=payments,O=Example", "2.5.4.3=billing,OU=payments,O=Example"],
)
def test_subject_dn_matches_after_normalisation(billing, dn):
    if dn.startswith("cn="):
        # Lower-case keywords are not parsed (cryptography's RFC 4514 parser knows them upper-case): refused, not guessed.
        assert not subject_matches(billing.certificate, dn)
    else:
        assert subject_matches(billing.certificate, dn)


@pytest.mark.parametrize(
    "dn", ["CN=billing,OU=payments,O=Other", "CN=billing,O=Example", "O=Example,OU=payments,CN=billing", "CN=billing", "nonsense"]
)
def test_subject_dn_mismatches(billing, dn):
    assert not subject_matches(billing.certificate, dn)


def test_subject_values_fold_case_and_whitespace(ca):
    cert = issue(ca, name(O="Example  Corp", CN="Billing Worker"))
    assert subject_matches(cert.certificate, "CN=billing   worker,O=example corp")


def test_san_matching(billing, ca):
    assert san_matches(billing.certificate, SPIFFE)
    assert not san_matches(billing.certificate, SPIFFE + "x")
    assert not san_matches(billing.certificate, SPIFFE.upper())  # URIs compare exactly
    assert san_matches(billing.certificate, "BILLING.example.org.")
    assert not san_matches(billing.certificate, "example.org")
    wildcard = issue(ca, name(CN="w"), dns=("*.example.org",))
    assert not san_matches(wildcard.certificate, "billing.example.org")  # no wildcard expansion
    assert not san_matches(issue(ca, name(CN="plain")).certificate, "billing.example.org")


def test_a_malformed_subject_dn_is_refused_at_registration(mtls):
    _, registry, _ = mtls
    with pytest.raises(ClientError, match="--tls-subject is not an RFC 4514 distinguished name"):
        registry.create("odd", scopes=["read"], audiences=[AUDIENCE], tls_subject="billing, Example")


def test_self_signed_key_must_be_registered():
    mine, other = self_signed(), self_signed()
    assert key_registered(mine.certificate, mine.jwks())
    assert not key_registered(mine.certificate, other.jwks())
    assert not key_registered(mine.certificate, None)


# ---- the token endpoint behind a trusted proxy ----------------------------------------------------------


def make_app(tmp_path, clock: FakeClock, **overrides: Any):
    settings: dict[str, Any] = {"trusted_proxies": f"{PROXY},192.0.2.0/24", "client_cert_header": HEADER, **overrides}
    config = make_config(tmp_path, **settings)
    initialise(config, clock)
    app = create_app(config, clock=clock)
    return app, app.extensions["tokendealer"].clients, config


def _serve(tmp_path, clock, ratelimit: str | None):
    app, registry, config = make_app(tmp_path, clock, ratelimit=ratelimit)
    yield app.test_client(), registry, config
    app.extensions["tokendealer"].audit.close()
    app.extensions["tokendealer"].engine.dispose()


@pytest.fixture
def mtls(tmp_path, clock):
    """An app behind a proxy at PROXY, its token endpoint on the fast path."""
    yield from _serve(tmp_path, clock, None)


@pytest.fixture(params=["fast path", "flask"])
def both_paths(request, tmp_path, clock):
    """The same, with the token endpoint on its fast path or on Flask (request-rate limits on)."""
    yield from _serve(tmp_path, clock, "1000/second" if request.param == "flask" else None)


def token(http, cert=None, address=PROXY, data=None, headers=None, header=HEADER, encoding="nginx_escaped"):
    sent = dict(headers or {})
    if cert is not None:
        sent[header] = getattr(cert, encoding)()
    return http.post("/oauth/token", data={**GRANT, **(data or {})}, headers=sent, environ_base={"REMOTE_ADDR": address})


def claims_of(response) -> dict[str, Any]:
    assert response.status_code == 200, response.get_json()
    return jwt.decode(response.get_json()["access_token"], options={"verify_signature": False})


@pytest.mark.parametrize("encoding", ["nginx_escaped", "rfc9440"])
def test_tls_client_auth_by_subject_binds_the_token(both_paths, billing, encoding):
    http, registry, config = both_paths
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    claims = claims_of(token(http, billing, data={"client_id": "billing"}, encoding=encoding))
    assert claims["client_id"] == "billing"
    assert claims["cnf"] == {"x5t#S256": presented(billing).thumbprint}
    lines = [json.loads(line) for line in open(config.audit_log)]
    assert lines[-1]["event"] == "token.issued" and lines[-1]["auth_method"] == "tls_client_auth"
    assert lines[-1]["x5t#S256"] == claims["cnf"]["x5t#S256"]
    metrics = http.get("/metrics").get_data()
    assert b'tokendealer_certificate_bound_tokens_issued_total{client_id="billing"} 1.0' in metrics


def test_tls_client_auth_by_san(mtls, billing):
    http, registry, _ = mtls
    registry.create("spiffe-billing", scopes=["read"], audiences=[AUDIENCE], tls_san=SPIFFE)
    registry.create("dns-billing", scopes=["read"], audiences=[AUDIENCE], tls_san="billing.example.org")
    assert claims_of(token(http, billing, data={"client_id": "spiffe-billing"}))["cnf"]["x5t#S256"] == presented(billing).thumbprint
    assert claims_of(token(http, billing, data={"client_id": "dns-billing"}))["sub"] == "dns-billing"


def test_self_signed_tls_client_auth(both_paths, tmp_path):
    http, registry, config = both_paths
    cert = self_signed()
    registry.create("selfie", scopes=["read"], audiences=[AUDIENCE], jwks=cert.jwks())
    claims = claims_of(token(http, cert, data={"client_id": "selfie"}))
    assert claims["cnf"]["x5t#S256"] == presented(cert).thumbprint
    assert json.loads(open(config.audit_log).read().splitlines()[-1])["auth_method"] == "self_signed_tls_client_auth"
    refused = token(http, self_signed(), data={"client_id": "selfie"})
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_client"


def test_wrong_certificate_and_no_certificate_are_invalid_client(mtls, ca):
    http, registry, _ = mtls
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    stranger = issue(ca, name(O="Example", OU="payments", CN="billing-not"))
    for response in (token(http, stranger, data={"client_id": "billing"}), token(http, None, data={"client_id": "billing"})):
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_client"


def test_header_from_an_untrusted_address_is_ignored(both_paths, billing):
    http, registry, _ = both_paths
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    assert token(http, billing, address="198.51.100.9", data={"client_id": "billing"}).status_code == 401
    # An address inside a listed network is trusted.
    assert token(http, billing, address="192.0.2.44", data={"client_id": "billing"}).status_code == 200
    assert token(http, billing, address="::ffff:192.0.2.45", data={"client_id": "billing"}).status_code == 200
    assert token(http, billing, address="[::ffff:192.0.2.46]", data={"client_id": "billing"}).status_code == 200


def test_a_client_cert_header_the_proxy_did_not_set_is_dropped(mtls, billing):
    """Only the configured header carries the certificate: a Client-Cert added by the caller, which the proxy
    passes along untouched, never reaches the authenticator (also not from the proxy's address)."""
    http, registry, _ = mtls
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    assert token(http, billing, header="Client-Cert", data={"client_id": "billing"}).status_code == 401


def test_secret_client_with_a_certificate_gets_a_bound_token(both_paths, billing):
    http, registry, _ = both_paths
    client, secret = registry.create("legacy", scopes=["read"], audiences=[AUDIENCE])
    bound = claims_of(token(http, billing, headers=basic("legacy", secret)))
    assert bound["cnf"] == {"x5t#S256": presented(billing).thumbprint}
    assert "cnf" not in claims_of(token(http, None, headers=basic("legacy", secret)))
    # An untrusted peer's header binds nothing either.
    assert "cnf" not in claims_of(token(http, billing, address="198.51.100.9", headers=basic("legacy", secret)))


def test_malformed_certificate_header_is_invalid_request(both_paths):
    http, registry, _ = both_paths
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    for value in (":!!:", "garbage", ":" + "QUJD" * 5000 + ":"):
        response = http.post(
            "/oauth/token", data={**GRANT, "client_id": "billing"}, headers={HEADER: value}, environ_base={"REMOTE_ADDR": PROXY}
        )
        assert response.status_code == 400, value
        assert response.get_json()["error"] == "invalid_request"


def test_failures_are_throttled_and_the_valid_certificate_still_passes(tmp_path, clock, billing, ca):
    app, registry, _ = make_app(tmp_path, clock, auth_failure_limit="3/minute")
    http = app.test_client()
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    stranger = issue(ca, name(O="Example", OU="payments", CN="mallory"))
    statuses = [token(http, stranger, data={"client_id": "billing"}).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    assert token(http, billing, data={"client_id": "billing"}).status_code == 200


def test_client_ca_file_requires_issuance_by_the_ca(tmp_path, clock, billing, ca):
    """With TOKENDEALER_CLIENT_CA_FILE, a self-made certificate with the registered subject is refused: a
    proxy accepting any certificate (nginx optional_no_ca, for self-signed clients) cannot be fooled."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    app, registry, _ = make_app(tmp_path, clock, client_ca_file=str(ca_file))
    http = app.test_client()
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    forged = issue(make_ca("Mallory CA"), name(O="Example", OU="payments", CN="billing"))
    assert token(http, forged, data={"client_id": "billing"}).status_code == 401
    assert token(http, billing, data={"client_id": "billing"}).status_code == 200
    clock.now = 4_200_000_000  # 2103: past the certificate's notAfter
    assert token(http, billing, data={"client_id": "billing"}).status_code == 401


def test_introspection_returns_cnf_and_tls_clients_may_introspect(mtls, billing):
    http, registry, _ = mtls
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    access_token = token(http, billing, data={"client_id": "billing"}).get_json()["access_token"]
    answer = http.post(
        "/oauth/introspect",
        data={"token": access_token, "client_id": "billing"},
        headers={HEADER: billing.nginx_escaped()},
        environ_base={"REMOTE_ADDR": PROXY},
    ).get_json()
    assert answer["active"] is True
    assert answer["cnf"] == {"x5t#S256": presented(billing).thumbprint}


def test_discovery_and_openapi_advertise_mtls(mtls):
    http, _, _ = mtls
    metadata = http.get("/.well-known/oauth-authorization-server").get_json()
    assert metadata["tls_client_certificate_bound_access_tokens"] is True
    for field in (
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ):
        assert {"tls_client_auth", "self_signed_tls_client_auth"} <= set(metadata[field])
    paths = http.get("/openapi.json").get_json()["paths"]
    for path in ("/oauth/token", "/oauth/introspect", "/oauth/revoke"):
        assert {"in": "header", "name": HEADER} in [{"in": p["in"], "name": p["name"]} for p in paths[path]["post"]["parameters"]]


def test_without_a_certificate_header_nothing_is_advertised_or_trusted(tmp_path, clock, billing):
    app, registry, _ = make_app(tmp_path, clock, trusted_proxies=None, client_cert_header=None)
    http = app.test_client()
    metadata = http.get("/.well-known/oauth-authorization-server").get_json()
    assert metadata["tls_client_certificate_bound_access_tokens"] is False
    assert "tls_client_auth" not in metadata["token_endpoint_auth_methods_supported"]
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    assert token(http, billing, header="Client-Cert", data={"client_id": "billing"}).status_code == 401


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"client_cert_header": "Client-Cert"}, "TOKENDEALER_CLIENT_CERT_HEADER needs TOKENDEALER_TRUSTED_PROXIES"),
        ({"client_cert_header": "Client-Cert", "trusted_proxies": "1"}, "TOKENDEALER_CLIENT_CERT_HEADER needs"),
        ({"client_cert_header": "Bad Header:", "trusted_proxies": PROXY}, "TOKENDEALER_CLIENT_CERT_HEADER must be an HTTP header name"),
        ({"trusted_proxies": "10.0.0.1,not-an-ip"}, "TOKENDEALER_TRUSTED_PROXIES must be"),
        ({"trusted_proxies": "-1"}, "TOKENDEALER_TRUSTED_PROXIES must be"),
        ({"client_ca_file": "/nonexistent/ca.pem"}, "TOKENDEALER_CLIENT_CA_FILE cannot be read"),
    ],
)
def test_settings_are_validated_with_one_line(tmp_path, settings, words):
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, **settings)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_trusted_proxies_forms():
    assert Config.load(environ={"TOKENDEALER_TRUSTED_PROXIES": "2"}).proxy_hops == 2
    networks = Config.load(environ={"TOKENDEALER_TRUSTED_PROXIES": "10.0.0.1, 10.1.0.0/16,::1"}).proxy_networks
    assert [str(n) for n in networks] == ["10.0.0.1/32", "10.1.0.0/16", "::1/128"]


def test_forwarded_for_is_used_only_from_a_listed_proxy(tmp_path, clock):
    app, _, _ = make_app(tmp_path, clock, auth_failure_limit_per_address="2/minute")
    http = app.test_client()

    def attempt(address: str, forwarded: str) -> int:
        headers = {**basic("nobody", "wrong"), "X-Forwarded-For": forwarded}
        return http.post("/oauth/token", data=GRANT, headers=headers, environ_base={"REMOTE_ADDR": address}).status_code

    # From the proxy, each forwarded address has its own per-address count.
    assert [attempt(PROXY, "198.51.100.1") for _ in range(3)] == [401, 401, 429]
    assert attempt(PROXY, "198.51.100.2") == 401
    # From anyone else X-Forwarded-For is ignored: the peer's own address is counted.
    assert [attempt("198.51.100.50", "198.51.100.3") for _ in range(3)] == [401, 401, 429]


def test_dpop_and_a_certificate_bind_the_token_to_both(mtls, billing, clock):
    """A request with a DPoP proof and a certificate gets a token naming both: a resource server needs both."""
    http, registry, config = mtls
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    dpop_key = DPoPKey(True, clock)
    response = token(http, billing, data={"client_id": "billing"}, headers={"DPoP": dpop_key.proof("POST", config.token_endpoint)})
    assert response.get_json()["token_type"] == "DPoP"
    assert claims_of(response)["cnf"] == {"jkt": dpop_key.jkt, "x5t#S256": presented(billing).thumbprint}
    access_token = response.get_json()["access_token"]
    verifier = TokenVerifier(config.issuer, AUDIENCE, jwks_uri=config.url("/.well-known/jwks.json"), clock=clock)
    verifier.policy.accept_keys(http.get("/.well-known/jwks.json").get_json(), "max-age=300", clock())
    url = "https://billing.example/invoices"

    def call(client_cert: Any) -> dict[str, Any]:
        proof = dpop_key.proof("GET", url, access_token)
        return verifier.verify(access_token, dpop_proof=proof, method="GET", url=url, client_cert=client_cert)

    assert call(billing.der)["sub"] == "billing"
    with pytest.raises(CertificateMismatch):
        call(None)


# ---- client_lib: the binding check in TokenVerifier and require_token -------------------------------------


@pytest.fixture
def issued(mtls, billing, clock):
    """A token bound to `billing`, and a verifier that already holds the server's keys."""
    http, registry, config = mtls
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    access_token = token(http, billing, data={"client_id": "billing"}).get_json()["access_token"]
    verifier = TokenVerifier(config.issuer, AUDIENCE, jwks_uri=config.url("/.well-known/jwks.json"), clock=clock)
    verifier.policy.accept_keys(http.get("/.well-known/jwks.json").get_json(), "max-age=300", clock())
    return access_token, verifier


@pytest.mark.parametrize("form", ["der", "pem", "certificate"])
def test_verifier_accepts_a_bound_token_with_its_certificate(issued, billing, form):
    access_token, verifier = issued
    assert verifier.verify(access_token, ["read"], client_cert=getattr(billing, form))["sub"] == "billing"
    assert verifier.fetch_count == 0


def test_verifier_refuses_a_bound_token_without_or_with_another_certificate(issued, ca):
    access_token, verifier = issued
    with pytest.raises(CertificateMismatch, match="none was presented"):
        verifier.verify(access_token)
    with pytest.raises(CertificateMismatch, match="another client certificate"):
        verifier.verify(access_token, client_cert=issue(ca, name(CN="other")).pem)
    with pytest.raises(CertificateMismatch):
        verifier.verify(access_token, client_cert=b"not a certificate")
    # Verified once, cached since: the binding is still checked on every call.
    with pytest.raises(CertificateMismatch):
        verifier.verify(access_token)


@pytest.mark.parametrize(
    ("cnf", "refused"),
    [(None, False), ({"jkt": "abc"}, False), ("x5t", True), ({"x5t#S256": 5}, True), ({"x5t#S256": "A" * 43}, True)],
)
def test_check_binding_shapes(billing, cnf, refused):
    claims = {} if cnf is None else {"cnf": cnf}
    if refused:
        with pytest.raises(CertificateMismatch):
            check_binding(claims, billing.der)
    else:
        check_binding(claims, billing.der)
        check_binding(claims, None)


def _protected(verifier: TokenVerifier, **options: Any) -> Flask:
    service = Flask("service")

    @service.get("/invoices")
    @require_token(verifier, ["read"], **options)
    def invoices() -> dict[str, Any]:
        return {"sub": g.token_claims["sub"]}

    return service


def test_require_token_takes_the_certificate_from_the_proxy_header(issued, billing, ca):
    access_token, verifier = issued
    service = _protected(verifier, client_cert_header="Client-Cert").test_client()
    auth = {"Authorization": f"Bearer {access_token}"}
    assert service.get("/invoices", headers={**auth, "Client-Cert": billing.rfc9440()}).get_json() == {"sub": "billing"}
    assert service.get("/invoices", headers={**auth, "Client-Cert": billing.nginx_escaped()}).status_code == 200
    for headers in (auth, {**auth, "Client-Cert": issue(ca, name(CN="x")).rfc9440()}, {**auth, "Client-Cert": ":junk:"}):
        refused = service.get("/invoices", headers=headers)
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_require_token_takes_the_certificate_from_the_wsgi_tls_environ(issued, billing):
    access_token, verifier = issued
    service = _protected(verifier).test_client()
    auth = {"Authorization": f"Bearer {access_token}"}
    assert service.get("/invoices", headers=auth, environ_base={"SSL_CLIENT_CERT": billing.pem.decode()}).status_code == 200
    # Without client_cert_header the header is not read: anyone could send it.
    assert service.get("/invoices", headers={**auth, "Client-Cert": billing.rfc9440()}).status_code == 401


@pytest.mark.anyio
async def test_require_token_async_reads_header_and_asgi_tls_extension(issued, billing):
    from fastapi import Depends, FastAPI  # noqa: PLC0415
    from httpx import ASGITransport, AsyncClient  # noqa: PLC0415

    from client_lib import AsyncTokenVerifier, require_token_async  # noqa: PLC0415

    access_token, sync_verifier = issued
    verifier = AsyncTokenVerifier(sync_verifier.issuer, AUDIENCE, jwks_uri="http://unused.invalid/jwks", clock=sync_verifier.clock)
    verifier.policy = sync_verifier.policy
    service = FastAPI()

    @service.get("/by-header")
    async def by_header(claims: dict = Depends(require_token_async(verifier, ["read"], client_cert_header="Client-Cert"))) -> dict:
        return {"sub": claims["sub"]}

    @service.get("/by-tls")
    async def by_tls(claims: dict = Depends(require_token_async(verifier, ["read"]))) -> dict:
        return {"sub": claims["sub"]}

    async def with_tls(scope, receive, send):
        scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [billing.pem.decode()]}
        await service(scope, receive, send)

    auth = {"Authorization": f"Bearer {access_token}"}
    async with AsyncClient(transport=ASGITransport(app=service), base_url="http://service") as http:
        assert (await http.get("/by-header", headers={**auth, "Client-Cert": billing.rfc9440()})).json() == {"sub": "billing"}
        assert (await http.get("/by-header", headers=auth)).status_code == 401
        assert (await http.get("/by-tls", headers=auth)).status_code == 401
    async with AsyncClient(transport=ASGITransport(app=with_tls), base_url="http://service") as http:
        assert (await http.get("/by-tls", headers=auth)).json() == {"sub": "billing"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_credentials_with_only_a_certificate_send_the_client_id():
    assert Credentials("billing", None, None, None, lambda: 0.0, tls=True).auth("https://td/oauth/token") == (
        {"client_id": "billing"},
        None,
    )
    with pytest.raises(ValueError):
        Credentials("billing", None, None, None, lambda: 0.0)
    with pytest.raises(ValueError):
        Credentials("billing", "s", ec.generate_private_key(ec.SECP256R1()), None, lambda: 0.0, tls=True)


def _near_misses(billing) -> list[str]:
    """Headers close to valid ones: truncated, bit-flipped, re-wrapped, or another object's encoding."""
    der, rfc9440, escaped = billing.der, billing.rfc9440(), billing.nginx_escaped()
    flipped = bytearray(der)
    flipped[len(der) // 2] ^= 0x55
    return [
        rfc9440[: len(rfc9440) // 2] + ":",
        ":" + base64.b64encode(bytes(flipped)).decode() + ":",
        ":" + base64.b64encode(der[:-10]).decode() + ":",
        escaped[: len(escaped) // 2],
        escaped.replace("BEGIN%20CERTIFICATE", "BEGIN%20X509%20CRL"),
        quote(billing.key_pem.decode(), safe=""),
        rfc9440 + "," + rfc9440,
    ]


def _refused(http, header: str) -> None:
    try:
        response = http.post(
            "/oauth/token", data={**GRANT, "client_id": "billing"}, headers={HEADER: header}, environ_base={"REMOTE_ADDR": PROXY}
        )
    except ValueError:
        return  # a value the test client itself cannot put in a header (CR, LF, NUL)
    assert response.status_code in (400, 401, 429), (header, response.get_json())  # 429: failures past the limit


def test_near_miss_certificate_headers_are_refused(fuzz_app):
    http, near_misses = fuzz_app
    for header in near_misses:
        _refused(http, header)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(value=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: ":" + base64.b64encode(b).decode() + ":")))
def test_fuzzed_certificate_headers_are_refused_never_500(fuzz_app, value):
    _refused(fuzz_app[0], value)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, billing, ca):
    """An app that also checks CA issuance, so a tampered copy of a good certificate is refused too."""
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "ca.pem").write_bytes(ca.pem)
    app, registry, _ = make_app(tmp, FakeClock(), client_ca_file=str(tmp / "ca.pem"))
    registry.create("billing", scopes=["read"], audiences=[AUDIENCE], tls_subject=SUBJECT)
    yield app.test_client(), _near_misses(billing)
    app.extensions["tokendealer"].audit.close()
    app.extensions["tokendealer"].engine.dispose()
