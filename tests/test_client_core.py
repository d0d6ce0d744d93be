"""client_lib's I/O-free core: token-cache timing, JWKS-cache decisions and token parsing."""

from __future__ import annotations

import base64
import json

import pytest

from client_lib import DisallowedAlgorithm, DiscoveryError, MalformedToken, WrongTokenType
from client_lib.core.jwks import JwksState, cache_lifetime
from client_lib.core.origins import OriginPin, origin_of
from client_lib.core.retries import backoff_delays, retry_after_seconds
from client_lib.core.tokens import CachedToken, TokenCache, token_error
from client_lib.core.verification import Verification
from client_lib.discovery import discovered_metadata

parse_token = Verification.parse


def _b64(data) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_token_stale_at_min_of_exp_minus_5min_and_half_life():
    long = CachedToken.from_response({"access_token": "t", "expires_in": 3600}, now=1000)
    assert long.stale_at == 1000 + 1800 and long.expires_at == 4600
    short = CachedToken.from_response({"access_token": "t", "expires_in": 400}, now=1000)
    assert short.stale_at == 1000 + 100  # exp - 5 min comes first
    cache = TokenCache()
    cache.store(("a", None), {"access_token": "t", "expires_in": 400}, requested_at=1000)
    assert cache.fresh(("a", None), 1099) == "t" and cache.fresh(("a", None), 1100) is None
    assert cache.usable(("a", None), 1399) == "t" and cache.usable(("a", None), 1400) is None
    cache.invalidate("t")
    assert cache.usable(("a", None), 1000) is None


@pytest.mark.parametrize(
    ("header", "expected"), [("public, max-age=300", 300), ("max-age=5", 60), ("max-age=999999", 3600), (None, 600), ("no-cache", 600)]
)
def test_jwks_cache_lifetime_clamped(header, expected):
    assert cache_lifetime(header, 600, 60, 3600) == expected


def test_jwks_state_refresh_ahead_cooldown_and_stale_if_error():
    state = JwksState(cooldown=30, stale_if_error=100)
    assert state.needs_refresh(0)
    state.accepted({"keys": []}, "max-age=100", now=0)
    assert not state.needs_refresh(79) and state.needs_refresh(80)  # refresh ahead at 80% of the lifetime
    state.failed(80)
    assert not state.needs_refresh(81)  # a failure is not retried at once
    assert state.usable(199) and not state.usable(200)  # stale-if-error is bounded
    assert state.may_fetch_for("k", 0)
    state.forced(0)
    assert not state.may_fetch_for("k", 29) and state.may_fetch_for("k", 30)
    state.still_unknown("k", 30)
    assert not state.may_fetch_for("k", 59) and state.may_fetch_for("other", 60)


def test_backoff_is_bounded_by_count_and_budget():
    assert len(list(backoff_delays(4, 0.2, 5.0, 100))) == 4
    assert sum(backoff_delays(50, 1.0, 5.0, 3.0)) <= 3.0
    assert retry_after_seconds("7", 0, 5) == 5 and retry_after_seconds("x", 1.5, 5) == 1.5 and retry_after_seconds(None, 0, 5) == 0


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (None, MalformedToken),
        ("a.b", MalformedToken),
        ("a.b.c.d", MalformedToken),
        ("!!.b.c", MalformedToken),
        (f"{_b64([1])}.{_b64({})}.c2ln", MalformedToken),
        (f"{_b64({'alg': 'ES256'})}.{_b64({})}.c2ln", WrongTokenType),
        (f"{_b64({'alg': 'ES256', 'typ': 'JWT'})}.{_b64({})}.c2ln", WrongTokenType),
        (f"{_b64({'alg': 'HS256', 'typ': 'at+jwt'})}.{_b64({})}.c2ln", DisallowedAlgorithm),
        (f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64({})}.", DisallowedAlgorithm),
        (f"{_b64({'alg': 'ES256', 'typ': 'at+jwt', 'crit': ['exp']})}.{_b64({})}.c2ln", MalformedToken),
        ("x" * 20000, MalformedToken),
    ],
)
def test_parse_token_refuses(token, error):
    with pytest.raises(error):
        parse_token(token)


def test_parse_token_accepts_application_at_jwt():
    jws = parse_token(f"{_b64({'alg': 'ES256', 'typ': 'application/at+jwt', 'kid': 'k'})}.{_b64({'a': 1})}.c2ln")
    assert jws.header["kid"] == "k" and jws.signature == b"sig"


class _Response:
    def __init__(self, status_code, body):
        self.status_code, self._body = status_code, body

    def json(self):
        if isinstance(self._body, Exception):
            raise self._body
        return self._body


def test_discovered_metadata_checks_the_issuer():
    assert discovered_metadata("https://i", "u", _Response(404, {})) is None
    assert discovered_metadata("https://i", "u", _Response(200, {"issuer": "https://i"})) == {"issuer": "https://i"}
    with pytest.raises(DiscoveryError, match="RFC 8414"):
        discovered_metadata("https://i", "u", _Response(200, {"issuer": "https://evil"}))
    with pytest.raises(DiscoveryError, match="JSON"):
        discovered_metadata("https://i", "u", _Response(200, ValueError("not json")))


def test_token_error_from_any_response():
    error = token_error(_Response(400, {"error": "invalid_scope", "error_description": "no"}))
    assert (error.error, error.error_description, error.status) == ("invalid_scope", "no", 400)
    assert token_error(_Response(403, ValueError("html"))).error == "http_403"


def test_origin_of_a_url():
    """RFC 6454 §4: scheme and host compared case-insensitively, the default port filled in."""
    assert origin_of("HTTP://Billing.Example/x?y") == ("http", "billing.example", 80)
    assert origin_of("https://billing.example:443") == origin_of("https://billing.example/")
    assert origin_of("https://[::1]:8443/") == ("https", "::1", 8443)
    for url in ("billing.example", "/relative", "ftp://billing.example/", "https://billing.example:99999/", "https://"):
        with pytest.raises(ValueError):
            origin_of(url)


def test_origin_pin_takes_the_first_origin_unless_given_one():
    pin = OriginPin()
    assert pin.admits("https://a.example/one") and pin.admits("https://A.example:443/two")
    assert not pin.admits("http://a.example/") and not pin.admits("https://a.example:8443/") and not pin.admits("https://b.example/")
    given = OriginPin("https://b.example/any")
    assert not given.admits("https://a.example/") and given.admits("https://b.example/")
    assert not given.admits("not a url")
