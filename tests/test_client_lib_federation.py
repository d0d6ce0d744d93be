"""client_lib's `federated_token_file` (SPEC §6): the workload token is re-read on every fetch, and an
unreadable, malformed or expired file is a clear `FederatedTokenError` (a `TokenClientError`)."""

from __future__ import annotations

import asyncio

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from client_lib import AsyncTokenClient, FederatedTokenError, TokenClient, TokenClientError

from .conftest import FakeClock

KEY = ec.generate_private_key(ec.SECP256R1())  # the client checks only the shape and exp, the server the rest
ENDPOINT = "http://127.0.0.1:9/oauth/token"  # never reached: every case fails before a request


def workload_token(clock, exp_in=3600):
    now = int(clock())
    claims = {
        "iss": "https://oidc.cluster.example",
        "sub": "system:serviceaccount:prod:billing",
        "aud": ["x"],
        "iat": now,
        "exp": now + exp_in,
    }
    return jwt.encode(claims, KEY, algorithm="ES256")


class Recorder(requests.Session):
    """A session that answers every POST with a token, keeping the forms it was sent."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def post(self, url, data=None, auth=None, **kwargs):
        self.forms.append((dict(data), auth))
        response = requests.Response()
        response.status_code = 200
        response._content = b'{"access_token": "t", "token_type": "Bearer", "expires_in": 3600, "scope": ""}'
        return response


def test_the_file_is_read_on_every_fetch(tmp_path):
    clock = FakeClock()
    path = tmp_path / "token"
    session = Recorder()
    client = TokenClient("http://issuer", "billing", federated_token_file=path, token_endpoint=ENDPOINT, session=session, clock=clock)
    first, second = workload_token(clock), workload_token(clock, exp_in=1800)
    path.write_text(first + "\n")
    client.fetch_token_response(audience="https://billing")
    path.write_text(second)  # the kubelet rewrote it
    client.fetch_token_response(audience="https://billing")
    assert [form["client_assertion"] for form, _ in session.forms] == [first, second]
    form, basic = session.forms[0]
    assert basic is None and form["client_id"] == "billing"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot be read"), ("", "is empty"), ("not a jwt", "is not a JWT"), ("expired", "has expired")],
)
def test_an_unusable_file_is_a_clear_error(tmp_path, content, message):
    clock = FakeClock()
    path = tmp_path / "token"
    if content == "expired":
        content = workload_token(clock, exp_in=-1)
    if content is not None:
        path.write_text(content)
    client = TokenClient("http://issuer", "billing", federated_token_file=path, token_endpoint=ENDPOINT, session=Recorder(), clock=clock)
    with pytest.raises(FederatedTokenError, match=message) as caught:
        client.get_token()
    assert isinstance(caught.value, TokenClientError)
    assert str(path) in str(caught.value)


def test_exactly_one_way_to_authenticate(tmp_path):
    with pytest.raises(ValueError):
        TokenClient("http://issuer", "billing", "secret", federated_token_file=tmp_path / "token")


def test_the_async_client_reads_the_file_too(tmp_path):
    clock = FakeClock()
    path = tmp_path / "token"
    client = AsyncTokenClient("http://issuer", "billing", federated_token_file=path, token_endpoint=ENDPOINT, clock=clock)
    with pytest.raises(FederatedTokenError, match="cannot be read"):
        asyncio.run(client.get_token())
    path.write_text(workload_token(clock))
    fields, basic = client.credentials.auth(ENDPOINT)
    assert basic is None and fields["client_assertion"] == path.read_text()
