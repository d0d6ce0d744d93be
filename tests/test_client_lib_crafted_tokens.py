"""Crafted tokens never make a protected service answer 500: require_token (Flask) and
require_token_async (FastAPI) answer each with 401 and a fixed RFC 6750 challenge, against a live TokenDealer."""

from __future__ import annotations

import base64
import json
import re
import time

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask, g, jsonify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from client_lib import AsyncTokenVerifier, InvalidToken, MalformedToken, TokenVerifier, require_token, require_token_async
from client_lib.bearer import challenge
from client_lib.core.verification import Verification
from client_lib.jose import MAX_JSON_DEPTH

from .conftest import BILLING
from .test_client_lib import active_private_key

ES256 = get_default_algorithms()["ES256"]
MARK = "TOKEN-TEXT"  # put into crafted fields: no challenge may repeat it
# RFC 6750 §3: error_description and scope values are %x20-21 / %x23-5B / %x5D-7E (no quote, backslash, CR, LF).
CHALLENGE_RE = re.compile(
    r'(Bearer|DPoP) error="(invalid_token|insufficient_scope|invalid_dpop_proof)", error_description="[\x20\x21\x23-\x5b\x5d-\x7e]*"'
    r'(, scope="[\x20\x21\x23-\x5b\x5d-\x7e]*")?(, algs="[A-Za-z0-9 ]+")?'
    # No token at all: no error code (RFC 6750 §3.1), a challenge per scheme (RFC 9449 §7.1).
    r'|Bearer, DPoP algs="[A-Za-z0-9 ]+"'
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(key, header: bytes, payload: bytes) -> str:
    """A compact JWS of raw header and payload bytes, signed by `key`."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{b64(ES256.sign(signing_input.encode(), key))}"


def valid_claims(stack) -> dict:
    now = int(time.time())
    return {"iss": stack["issuer"], "sub": "caller", "client_id": "caller", "aud": BILLING, "iat": now, "exp": now + 600, "jti": "j"}


def crafted_tokens(stack) -> dict[str, str]:
    """name -> a token built to break the parser, the checks or the challenge."""
    kid, key = active_private_key(stack)
    good = {"alg": "ES256", "typ": "at+jwt", "kid": kid}
    claims = json.dumps(valid_claims(stack)).encode()

    def header(**fields) -> bytes:
        return json.dumps({**good, **fields}).encode()

    def unsigned(raw_header: bytes) -> str:
        return f"{b64(raw_header)}.{b64(claims)}.{b64(b'x' * 64)}"

    tokens = {
        "header 6000 [": f"{b64(b'[' * 6000)}.e30.",
        "header object then 6000 [": unsigned(b'{"alg":"ES256","typ":"at+jwt","x":' + b"[" * 6000),
        "header 900 deep, closed": unsigned(header(x=json.loads("[" * 900 + "]" * 900))),
        "signed payload 6000 [": signed(key, header(), b"[" * 6000),
        "signed payload 6000 { deep": signed(key, header(), b'{"a":' * 2000),
        "signed payload 900 deep, closed": signed(key, header(), b'{"a":' * 900 + b"1" + b"}" * 900),
        "signed payload not an object": signed(key, header(), b"[]"),
        "signed payload invalid UTF-8": signed(key, header(), b'{"sub":"\xff\xfe"}'),
        "signed payload NaN exp": signed(key, header(), json.dumps({**valid_claims(stack), "exp": float("nan")}).encode()),
        "alg non-ASCII": unsigned(header(alg=f"é{MARK}")),
        "alg U+2028": unsigned(header(alg=f"\u2028{MARK}")),
        "alg not Latin-1": unsigned(header(alg=f"€{MARK}")),
        "alg CR LF": unsigned(header(alg=f"ES256\r\nX-Injected: {MARK}")),
        "alg with quotes": unsigned(header(alg=f'"{MARK}\\"')),
        "alg number": unsigned(header(alg=256)),
        "alg null": unsigned(header(alg=None)),
        "alg list": unsigned(header(alg=["ES256"])),
        "alg object": unsigned(header(alg={"ES256": MARK})),
        "alg none": unsigned(header(alg="none")),
        "kid non-ASCII": unsigned(header(kid=f"é\u2028{MARK}")),
        "kid CR LF": unsigned(header(kid=f"k\r\n{MARK}")),
        "kid huge": unsigned(header(kid=MARK * 900)),
        "kid list": unsigned(header(kid=[kid])),
        "typ non-ASCII": unsigned(header(typ=f"é€\u2028{MARK}")),
        "typ upper case": unsigned(header(typ="AT+JWT")),
        "typ list": unsigned(header(typ=["at+jwt"])),
        "header array": unsigned(b"[]"),
        "header string": unsigned(b'"at+jwt"'),
        "header null": unsigned(b"null"),
        "header invalid UTF-8": unsigned(b'{"alg":"ES256","typ":"at+jwt","kid":"\xff"}'),
        "header UTF-16": unsigned(json.dumps(good).encode("utf-16")),
        "header NaN": unsigned(b'{"alg":"ES256","typ":"at+jwt","kid":NaN}'),
        "header crit": unsigned(header(crit=[MARK])),
        "signature bad length": f"{b64(header())}.{b64(claims)}.x",
        "empty segments": "..",
        "empty header": f".{b64(claims)}.sig",
        "empty payload": f"{b64(header())}..sig",
        "5 segments (JWE)": "a.b.c.d.e",
        "2 segments": f"{b64(header())}.{b64(claims)}",
        "not base64url": "ey+J.ey/J.sig",
        "over 16 KiB": unsigned(header(pad="p" * 17000)),
    }
    return tokens


def challenge_problems(status: int, www_authenticate: str | None) -> str | None:
    """What is wrong with a refusal, or None: it must be a 401 with a fixed, RFC 6750 §3 conforming challenge."""
    if status != 401:
        return f"status {status}"
    if www_authenticate is None or not CHALLENGE_RE.fullmatch(www_authenticate):
        return f"challenge {www_authenticate!r}"
    if MARK in www_authenticate:
        return "challenge repeats token text"
    return None


def flask_service(verifier: TokenVerifier) -> Flask:
    app = Flask("crafted")  # not in testing mode: an exception becomes the 500 a real server would answer

    @app.get("/")
    @require_token(verifier)
    def index():
        return jsonify(caller=g.token_claims["client_id"])

    return app


def fastapi_service(verifier: AsyncTokenVerifier) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def index(claims: dict = Depends(require_token_async(verifier))) -> dict:
        return {"caller": claims["client_id"]}

    return app


def test_crafted_tokens_get_401_from_flask(stack):
    http = flask_service(TokenVerifier(stack["issuer"], BILLING)).test_client()
    problems = {}
    for name, token in crafted_tokens(stack).items():
        response = http.get("/", headers={"Authorization": f"Bearer {token}"})
        problem = challenge_problems(response.status_code, response.headers.get("WWW-Authenticate"))
        if problem:
            problems[name] = problem
    assert not problems, "\n".join(f"{name}: {problem}" for name, problem in problems.items())


@pytest.mark.anyio
async def test_crafted_tokens_get_401_from_fastapi(stack, anyio_backend):
    verifier = AsyncTokenVerifier(stack["issuer"], BILLING)
    transport = httpx.ASGITransport(app=fastapi_service(verifier), raise_app_exceptions=False)
    problems = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://service.test") as http:
        for name, token in crafted_tokens(stack).items():
            response = await http.get("/", headers={"Authorization": f"Bearer {token}"})
            problem = challenge_problems(response.status_code, response.headers.get("WWW-Authenticate"))
            if problem:
                problems[name] = problem
    await verifier.aclose()
    assert not problems, "\n".join(f"{name}: {problem}" for name, problem in problems.items())


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_challenge_text_is_fixed_per_exception_class():
    """RFC 6750 §3: each refusal names its class's fixed reason, never the text it was raised with."""
    for cls in (InvalidToken, *InvalidToken.__subclasses__()):
        status, headers, body = challenge(cls(f'é\u2028"\r\n{MARK}'), ["invoices:read"])
        assert MARK not in json.dumps(body), cls
        assert body == challenge(cls("other text"), ["invoices:read"])[2], cls
        if status != 503:
            assert CHALLENGE_RE.fullmatch(headers["WWW-Authenticate"]), cls


def test_header_json_is_strict_and_shallow():
    """RFC 7515 §7.1: the header is base64url of UTF-8 JSON; nesting is capped, NaN and deep input refused."""

    def token(raw_header: bytes) -> str:
        return f"{b64(raw_header)}.e30.{b64(b'x' * 64)}"

    def nested(depth: int) -> bytes:  # a header object whose x nests `depth` levels deep in all
        return b'{"alg":"ES256","typ":"at+jwt","kid":"k","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert Verification.parse(token(nested(MAX_JSON_DEPTH))).header["kid"] == "k"
    for raw in (
        nested(MAX_JSON_DEPTH + 1),
        b"[" * 12_000,
        b'{"alg":"ES256","typ":"at+jwt","kid":NaN}',
        b'{"alg":"ES256","typ":"at+jwt","kid":"k"}'.decode().encode("utf-16"),
        b'{"alg":"ES256","typ":"at+jwt","kid":"\xff"}',
    ):
        with pytest.raises(MalformedToken):
            Verification.parse(token(raw))


# ---- a fuzz of random header and payload JSON, signed with the issuer's key ---------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
ACTIVE_KID = object()  # replaced by the stack's active kid
headers = json_values | st.fixed_dictionaries(
    {
        "alg": st.just("ES256") | json_values,
        "typ": st.sampled_from(["at+jwt", "application/at+jwt"]) | st.sampled_from(["AT+JWT", "JWT"]) | json_values,
        "kid": st.just(ACTIVE_KID) | json_values,
    },
    optional={"crit": json_values, "x5u": json_values},
)
claim_overrides = st.dictionaries(st.sampled_from(["iss", "sub", "client_id", "aud", "iat", "nbf", "exp", "jti", "scope"]), json_values)


@pytest.fixture(scope="module")
def fuzz_target(stack):
    """The issuer's active kid and key, and a Flask service with its own verifier."""
    kid, key = active_private_key(stack)
    verifier = TokenVerifier(stack["issuer"], BILLING)
    return kid, key, verifier, flask_service(verifier).test_client()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(header=headers, claims=claim_overrides, whole_payload=st.none() | json_values)
def test_fuzzed_tokens_raise_only_invalid_token(stack, fuzz_target, header, claims, whole_payload):
    """Whatever JSON a signed token carries, verify() raises nothing but InvalidToken subclasses and the
    Flask service answers 200 or a fixed 401."""
    kid, key, verifier, http = fuzz_target
    if isinstance(header, dict) and header.get("kid") is ACTIVE_KID:
        header["kid"] = kid
    payload = {**valid_claims(stack), **claims} if whole_payload is None else whole_payload
    token = signed(key, json.dumps(header).encode(), json.dumps(payload).encode())
    try:
        verifier.verify(token)
    except InvalidToken:
        pass
    response = http.get("/", headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        assert challenge_problems(response.status_code, response.headers.get("WWW-Authenticate")) is None
