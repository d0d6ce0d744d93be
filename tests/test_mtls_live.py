"""Mutual TLS end to end: Debian's real nginx, configured from docs/mtls-nginx.conf, terminates TLS in front of
the real `tokendealer serve`; clients present certificates made here (RFC 8705)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
import requests

from client_lib import AsyncTokenClient, CertificateMismatch, TokenClient, TokenRequestError, TokenVerifier

from .certificates import issue, make_ca, name, self_signed
from .conftest import AUDIENCE, LiveServer, debian_tool, free_port, run_cli, server_env

pytestmark = pytest.mark.live

SHIPPED = Path(__file__).parent.parent / "docs" / "mtls-nginx.conf"
HEADER = "X-SSL-Client-Cert"
SUBJECT = "CN=billing,OU=payments,O=Example"
SPIFFE = "spiffe://example.org/ns/billing/sa/worker"
GRANT = {"grant_type": "client_credentials"}


def nginx_config(tmp: Path, nginx_port: int, upstream_port: int, files: dict[str, Path]) -> Path:
    """The shipped configuration with this test's ports and files, in a main file whose pid, logs and temp
    paths all lie in `tmp`."""
    site = SHIPPED.read_text()
    for shipped, local in (
        ("server 127.0.0.1:5000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{nginx_port} ssl;"),
        ("/etc/nginx/tls/tokendealer.pem", str(files["server_cert"])),
        ("/etc/nginx/tls/tokendealer.key", str(files["server_key"])),
        ("/etc/nginx/tls/client-ca.pem", str(files["ca"])),
    ):
        assert shipped in site, f"docs/mtls-nginx.conf no longer holds {shipped!r}"
        site = site.replace(shipped, local)
    (tmp / "site.conf").write_text(site)
    temp = tmp / "nginx-temp"
    temp.mkdir()
    main = tmp / "nginx.conf"
    main.write_text(
        "\n".join(
            [
                "user root root;" if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0" else "",
                "worker_processes 1;",
                "daemon off;",
                f"pid {tmp / 'nginx.pid'};",
                f"error_log {tmp / 'nginx-error.log'} warn;",
                "events { worker_connections 64; }",
                "http {",
                f"    access_log {tmp / 'nginx-access.log'};",
                *(f"    {kind}_temp_path {temp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
                f"    include {tmp / 'site.conf'};",
                "}",
            ]
        )
    )
    return main


@pytest.fixture(scope="module")
def mtls_stack(tmp_path_factory) -> Any:
    nginx = debian_tool("nginx", "nginx")
    tmp = tmp_path_factory.mktemp("mtls")
    ca = make_ca()
    server = issue(ca, name(CN="127.0.0.1"), ips=("127.0.0.1",), server=True)
    certs = {
        "billing": issue(ca, name(O="Example", OU="payments", CN="billing"), uris=(SPIFFE,)),
        "selfie": self_signed(),
        # The registered subject, from a CA TokenDealer does not trust: nginx (optional_no_ca) lets it through.
        "mallory": issue(make_ca("Mallory CA"), name(O="Example", OU="payments", CN="billing")),
    }
    files = {"ca": tmp / "ca.pem"}
    files["ca"].write_bytes(ca.pem)
    files["server_cert"], files["server_key"] = map(Path, server.write(tmp, "server"))
    paths = {stem: cert.write(tmp, stem) for stem, cert in certs.items()}
    nginx_port, upstream_port = free_port(), free_port()
    issuer = f"https://127.0.0.1:{nginx_port}"
    env = server_env(
        tmp,
        TOKENDEALER_ISSUER=issuer,
        TOKENDEALER_TRUSTED_PROXIES="127.0.0.1",
        TOKENDEALER_CLIENT_CERT_HEADER=HEADER,
        TOKENDEALER_CLIENT_CA_FILE=str(files["ca"]),
    )
    assert run_cli("init", env=env).returncode == 0
    (tmp / "selfie.jwks").write_text(json.dumps(certs["selfie"].jwks()))
    for args in (
        ("billing", "--tls-subject", SUBJECT),
        ("billing-san", "--tls-san", SPIFFE),
        ("selfie", "--jwks", str(tmp / "selfie.jwks")),
        ("legacy",),
    ):
        result = run_cli("client", "create", *args, "--scope", "read", "--audience", AUDIENCE, "--json", env=env)
        assert result.returncode == 0, result.stderr
        if args[0] == "legacy":
            legacy_secret = json.loads(result.stdout)["client_secret"]
    live = LiveServer(env, workers=1, port=upstream_port).start()
    process = subprocess.Popen(
        [nginx, "-c", str(nginx_config(tmp, nginx_port, upstream_port, files)), "-p", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                pytest.fail(f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}", pytrace=False)
            try:
                socket.create_connection(("127.0.0.1", nginx_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield {
            "issuer": issuer,
            "server": live,
            "ca": str(files["ca"]),
            "certs": certs,
            "paths": paths,
            "legacy_secret": legacy_secret,
            "tmp": tmp,
            "env": env,
        }
    finally:
        process.terminate()
        process.wait(10)
        live.stop()


def thumbprint(cert) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(cert.der).digest()).rstrip(b"=").decode()


def token_via_nginx(
    stack, cert: str | None, data: dict[str, str], headers: dict[str, str] | None = None, **kwargs: Any
) -> requests.Response:
    return requests.post(
        stack["issuer"] + "/oauth/token",
        data={**GRANT, **data},
        headers=headers,
        cert=stack["paths"][cert] if cert else None,
        verify=stack["ca"],
        timeout=10,
        **kwargs,
    )


def claims_of(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return jwt.decode(response.json()["access_token"], options={"verify_signature": False})


def test_discovery_through_nginx_advertises_mtls(mtls_stack):
    metadata = requests.get(mtls_stack["issuer"] + "/.well-known/oauth-authorization-server", verify=mtls_stack["ca"], timeout=10).json()
    assert metadata["tls_client_certificate_bound_access_tokens"] is True
    assert {"tls_client_auth", "self_signed_tls_client_auth"} <= set(metadata["token_endpoint_auth_methods_supported"])


def test_tls_client_auth_by_subject_and_by_san_bind_the_token(mtls_stack):
    billing = mtls_stack["certs"]["billing"]
    for client_id in ("billing", "billing-san"):
        claims = claims_of(token_via_nginx(mtls_stack, "billing", {"client_id": client_id}))
        assert claims["sub"] == client_id
        assert claims["cnf"] == {"x5t#S256": thumbprint(billing)}


def test_self_signed_tls_client_auth(mtls_stack):
    claims = claims_of(token_via_nginx(mtls_stack, "selfie", {"client_id": "selfie"}))
    assert claims["cnf"]["x5t#S256"] == thumbprint(mtls_stack["certs"]["selfie"])
    deadline = time.monotonic() + 10  # the server writes its audit lines twice a second
    while not any(
        line.get("auth_method") == "self_signed_tls_client_auth" and line.get("client_id") == "selfie"
        for line in map(json.loads, (mtls_stack["tmp"] / "audit.log").read_text().splitlines())
    ):
        assert time.monotonic() < deadline, "no audit line with auth_method self_signed_tls_client_auth"
        time.sleep(0.1)


def test_refusals(mtls_stack):
    # No certificate, another client's certificate, and the right subject from a CA TokenDealer does not trust.
    for cert, client_id in ((None, "billing"), ("selfie", "billing"), ("mallory", "billing"), ("billing", "selfie")):
        response = token_via_nginx(mtls_stack, cert, {"client_id": client_id})
        assert response.status_code == 401, (cert, client_id)
        assert response.json()["error"] == "invalid_client"


def test_forged_header_through_nginx_is_overwritten(mtls_stack):
    billing = mtls_stack["certs"]["billing"]
    for forged in ({HEADER: billing.nginx_escaped()}, {"Client-Cert": billing.rfc9440()}):
        # Without a certificate of its own, and with another one: nginx replaces (or drops) the copy.
        assert token_via_nginx(mtls_stack, None, {"client_id": "billing"}, headers=forged).status_code == 401
        assert token_via_nginx(mtls_stack, "selfie", {"client_id": "billing"}, headers=forged).status_code == 401
        # A secret client sending a forged copy gets a token bound to nothing, or to its real certificate.
        auth = ("legacy", mtls_stack["legacy_secret"])
        assert "cnf" not in claims_of(token_via_nginx(mtls_stack, None, {}, headers=forged, auth=auth))
        bound = claims_of(token_via_nginx(mtls_stack, "selfie", {}, headers=forged, auth=auth))
        assert bound["cnf"]["x5t#S256"] == thumbprint(mtls_stack["certs"]["selfie"])


def test_forged_header_sent_directly_from_an_untrusted_address_is_ignored(mtls_stack):
    """The server listens on 127.0.0.1 and trusts only 127.0.0.1 (nginx): 127.0.0.2 is any other host."""
    billing = mtls_stack["certs"]["billing"]
    body = urlencode({**GRANT, "client_id": "billing"})
    connection = http.client.HTTPConnection("127.0.0.1", mtls_stack["server"].port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        for header, value in ((HEADER, billing.nginx_escaped()), ("Client-Cert", billing.rfc9440())):
            connection.request("POST", "/oauth/token", body, {"Content-Type": "application/x-www-form-urlencoded", header: value})
            response = connection.getresponse()
            assert response.status == 401
            assert json.loads(response.read())["error"] == "invalid_client"
    finally:
        connection.close()


def test_client_lib_sync_with_cert_then_verifies_the_binding(mtls_stack):
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, wins over session.verify (requests #3829)
    session.verify = mtls_stack["ca"]
    client = TokenClient(mtls_stack["issuer"], "billing", cert=mtls_stack["paths"]["billing"], session=session)
    token = client.get_token(audience=AUDIENCE, scope="read")
    assert client.get_token(audience=AUDIENCE, scope="read") == token  # cached
    verifier = TokenVerifier(mtls_stack["issuer"], AUDIENCE, session=session)
    assert verifier.verify(token, ["read"], client_cert=mtls_stack["certs"]["billing"].pem)["sub"] == "billing"
    with pytest.raises(CertificateMismatch):
        verifier.verify(token, ["read"])
    with pytest.raises(CertificateMismatch):
        verifier.verify(token, ["read"], client_cert=mtls_stack["certs"]["selfie"].der)
    with pytest.raises(TokenRequestError) as refused:
        TokenClient(mtls_stack["issuer"], "billing", cert=mtls_stack["paths"]["selfie"], session=session).get_token(audience=AUDIENCE)
    assert refused.value.error == "invalid_client"


def test_token_command_with_a_certificate(mtls_stack):
    env = {**mtls_stack["env"], "REQUESTS_CA_BUNDLE": mtls_stack["ca"]}
    cert, key = mtls_stack["paths"]["billing"]
    result = run_cli("token", "--client-id", "billing", "--cert", cert, "--cert-key", key, "--audience", AUDIENCE, "--json", env=env)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(json.loads(result.stdout)["access_token"], options={"verify_signature": False})
    assert claims["cnf"]["x5t#S256"] == thumbprint(mtls_stack["certs"]["billing"])
    refused = run_cli("token", "--client-id", "billing", "--cert", *mtls_stack["paths"]["selfie"][:1], "--audience", AUDIENCE, env=env)
    assert refused.returncode == 2 and "--cert and --cert-key together" in refused.stderr
    wrong = run_cli(
        "token",
        "--client-id",
        "billing",
        "--cert",
        *mtls_stack["paths"]["selfie"][:1],
        "--cert-key",
        mtls_stack["paths"]["selfie"][1],
        env=env,
    )
    assert wrong.returncode == 1 and "invalid_client" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.anyio
async def test_client_lib_async_with_cert(mtls_stack, monkeypatch):
    # httpx's own client, trusting the test CA through SSL_CERT_FILE as httpx does by default.
    monkeypatch.setenv("SSL_CERT_FILE", mtls_stack["ca"])
    client = AsyncTokenClient(mtls_stack["issuer"], "selfie", cert=mtls_stack["paths"]["selfie"])
    try:
        token = await client.get_token(audience=AUDIENCE)
        assert await client.get_token(audience=AUDIENCE) == token
    finally:
        await client.aclose()
    assert jwt.decode(token, options={"verify_signature": False})["cnf"]["x5t#S256"] == thumbprint(mtls_stack["certs"]["selfie"])
    # A given httpx client carries the certificate itself.
    context = ssl.create_default_context(cafile=mtls_stack["ca"])
    context.load_cert_chain(*mtls_stack["paths"]["billing"])
    async with httpx.AsyncClient(verify=context) as http:
        client = AsyncTokenClient(mtls_stack["issuer"], "billing-san", cert=mtls_stack["paths"]["billing"], http=http)
        claims = jwt.decode(await client.get_token(audience=AUDIENCE), options={"verify_signature": False})
    assert claims["sub"] == "billing-san"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_an_underscore_header_from_a_trusted_proxy_is_not_the_certificate_header(mtls_stack):
    """Header smuggling: `X_SSL_Client_Cert` is not `X-SSL-Client-Cert`, but CGI-style environ names make them
    one key. A proxy that passes underscore names on (Envoy and HAProxy do by default; nginx only with
    `underscores_in_headers on`) and sets the real header only for a client with a certificate would let a
    client without one choose the certificate: a copy of another client's (public) certificate."""
    billing = mtls_stack["certs"]["billing"]
    body = urlencode({**GRANT, "client_id": "billing"})
    # Sent from 127.0.0.1, the trusted proxy, as such a proxy forwards a client's request without a certificate.
    connection = http.client.HTTPConnection("127.0.0.1", mtls_stack["server"].port, timeout=10)
    try:
        for header in ("X_SSL_Client_Cert", "X-SSL_Client-Cert", "Client_Cert"):
            value = billing.rfc9440() if header == "Client_Cert" else billing.nginx_escaped()
            connection.request("POST", "/oauth/token", body, {"Content-Type": "application/x-www-form-urlencoded", header: value})
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 401, (header, answer)
            assert answer["error"] == "invalid_client"
    finally:
        connection.close()
