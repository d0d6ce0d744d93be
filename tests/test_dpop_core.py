"""client_lib's I/O-free DPoP rules (RFC 9449): proofs, the request's headers, challenges, replay memory."""

from __future__ import annotations

import pytest

from client_lib.bearer import Presented, challenge
from client_lib.core.dpop import DPoPKey, MemoryProofReplay, Nonces, ProofCheck, asks_for_nonce, htu, presentation, single_proof
from client_lib.exceptions import BoundTokenAsBearer, InvalidDPoPProof, InvalidToken, ReplayCacheUnavailable, UseDPoPNonce
from client_lib.jose import parse_dpop_proof, sha256_b64url
from client_lib.proof_replay import RedisProofReplay

from .conftest import FakeClock

URL = "https://api.example/invoices"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://API.example:443/a?b=1#c", "https://api.example/a"),
        ("http://h:8080", "http://h:8080/"),
        ("HTTP://[::1]:80/x", "http://[::1]/x"),
    ],
)
def test_htu_normalisation(url, expected):
    assert htu(url) == expected


@pytest.mark.parametrize("url", ["ftp://h/x", "/relative", "https://"])
def test_htu_refuses_what_is_not_an_absolute_http_url(url):
    with pytest.raises(ValueError):
        htu(url)


def test_single_proof():
    assert single_proof([]) is None
    assert single_proof([" a.b.c "]) == "a.b.c"
    for values in (["a.b.c", "d.e.f"], ["a.b.c, d.e.f"], [""], ["x" * 9000]):
        with pytest.raises(InvalidDPoPProof):
            single_proof(values)


def test_each_proof_is_new_and_carries_what_the_request_needs():
    clock = FakeClock()
    key = DPoPKey(True, clock)
    first, second = key.proof("get", URL + "?q=1", "tok"), key.proof("get", URL + "?q=1", "tok")
    assert first != second
    claims = parse_dpop_proof(first).claims
    assert (claims["htm"], claims["htu"], claims["iat"], claims["ath"]) == ("GET", URL, int(clock()), sha256_b64url("tok"))
    assert "nonce" not in claims and parse_dpop_proof(first).jkt == key.jkt


def test_nonces_are_remembered_per_origin_and_a_repeat_is_not_new():
    key = DPoPKey(True, FakeClock())
    assert key.remember_nonce(URL, "n1") and not key.remember_nonce(URL + "/other", "n1")
    assert not key.remember_nonce(URL, None) and not key.remember_nonce(URL, "x" * 600)
    assert parse_dpop_proof(key.proof("GET", "https://api.example/elsewhere")).claims["nonce"] == "n1"
    assert "nonce" not in parse_dpop_proof(key.proof("GET", "https://other.example/")).claims


def test_proof_check_nonce_and_window():
    clock = FakeClock()
    key = DPoPKey(True, clock)
    nonces = Nonces(lambda: b"k" * 32)
    check = ProofCheck(nonces=nonces)
    with pytest.raises(UseDPoPNonce) as asked:
        check.check(parse_dpop_proof(key.proof("GET", URL)), "GET", URL, clock())
    key.remember_nonce(URL, asked.value.nonce)
    proof = parse_dpop_proof(key.proof("GET", URL))
    check.check(proof, "GET", URL, clock())
    assert check.replay_until(proof) == int(clock()) + 60
    with pytest.raises(InvalidDPoPProof, match="iat"):
        check.check(proof, "GET", URL, clock() + 61)


def test_memory_replay_is_bounded_and_forgets_expired_entries():
    clock = FakeClock()
    replay = MemoryProofReplay(clock, size=2)
    assert replay.first_use("k", "1", clock() + 10) and not replay.first_use("k", "1", clock() + 10)
    assert replay.first_use("k", "2", clock() + 10)
    assert not replay.first_use("k", "3", clock() + 10)  # full of live entries: refused, none forgotten
    clock.advance(11)
    assert replay.first_use("k", "3", clock() + 10) and replay.first_use("k", "1", clock() + 10)


def test_presentation_headers():
    assert presentation("t", None, "GET", URL) == {"Authorization": "Bearer t"}
    headers = presentation("t", DPoPKey(True, FakeClock()), "GET", URL)
    assert headers["Authorization"] == "DPoP t" and parse_dpop_proof(headers["DPoP"]).claims["ath"] == sha256_b64url("t")
    assert asks_for_nonce(401, 'DPoP error="use_dpop_nonce"') and not asks_for_nonce(400, 'DPoP error="use_dpop_nonce"')


def test_presented_reads_both_schemes():
    assert Presented.read("Bearer t", []) == Presented("Bearer", "t", None)
    assert Presented.read("dpop t", ["p.q.r"]) == Presented("DPoP", "t", "p.q.r")
    for header in (None, "Basic x", "DPoP "):
        with pytest.raises(InvalidToken):
            Presented.read(header, [])
    with pytest.raises(InvalidDPoPProof):
        Presented.read("DPoP t", ["a", "b"])


def test_challenges_name_the_scheme_the_algorithms_and_the_nonce():
    status, headers, body = challenge(UseDPoPNonce("x", "N1"), None, "DPoP")
    assert status == 401 and headers["DPoP-Nonce"] == "N1" and body["error"] == "use_dpop_nonce"
    assert headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"') and 'algs="ES256 ' in headers["WWW-Authenticate"]
    assert challenge(BoundTokenAsBearer("x"), None)[1]["WWW-Authenticate"].startswith('DPoP error="invalid_token"')
    assert challenge(InvalidToken("x"), None)[1]["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_an_unreachable_redis_refuses_the_proof_never_lets_it_through():
    replay = RedisProofReplay("redis://127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(ReplayCacheUnavailable):
        replay.first_use("dpop:k", "j", 2e9)
    assert challenge(ReplayCacheUnavailable("x"), None, "DPoP")[0] == 503
