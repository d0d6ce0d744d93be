"""Client authentication at the token, introspection and revocation endpoints (RFC 6749 §2.3, RFC 7523),
with the brute-force guard in front of it."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .assertions import ASSERTION_TYPE, AssertionVerifier
from .clients import Client, ClientStore, SecretHasher
from .errors import InvalidClient, InvalidRequest, TemporarilyUnavailable, TooManyRequests

Params = Mapping[str, list[str]]
MAX_CLIENT_ID = 256


@dataclass(frozen=True)
class Credentials:
    """What a request presents: the claimed client id and how it proves it."""

    client_id: str
    method: str  # client_secret_basic | client_secret_post | private_key_jwt
    secret: str | None = None
    assertion: str | None = None


class AuthFailureGuard:
    """Counts failed client authentications per client id and per address; past the limit, refuses with 429.

    Once over the limit a client id is refused even with the right secret, until the window passes, so
    guessing cannot continue at a slower pace from many addresses.

    The success path must not pay a storage round trip per request (with Redis that would cost more than
    signing the token), so a key seen with no failures at all is trusted as clean for `clean_seconds`;
    any failure recorded by this process drops that at once, so one process counts exactly, and a lockout
    caused through another instance reaches this one within `clean_seconds`.
    """

    def __init__(
        self,
        storage_uri: str,
        per_client: str,
        per_address: str,
        clock: Callable[[], float] = time.time,
        clean_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))
        self.per_client = parse_many(per_client)
        self.per_address = parse_many(per_address)
        self.clock = clock
        self.clean_seconds = clean_seconds
        self.monotonic = monotonic
        self._clean: dict[tuple[str, str], float] = {}

    def _keys(self, client_id: str | None, address: str | None) -> list:
        out = []
        if client_id:
            out += [(limit, ("auth-fail-client", client_id)) for limit in self.per_client]
        if address:
            out += [(limit, ("auth-fail-addr", address)) for limit in self.per_address]
        return out

    def check(self, client_id: str | None, address: str | None) -> None:
        """Raise TooManyRequests if this client id or address used up its failures."""
        now = self.monotonic()
        for limit, key in self._keys(client_id, address):
            if self._clean.get(key, 0.0) > now:
                continue
            reset_at, remaining = self._storage_call(self.limiter.get_window_stats, limit, *key)
            if remaining <= 0:
                raise TooManyRequests(
                    "too many failed client authentications; retry later",
                    headers={"Retry-After": str(max(1, int(reset_at - self.clock()) + 1))},
                )
            if remaining >= limit.amount:
                if len(self._clean) > 100_000:
                    self._clean.clear()
                self._clean[key] = now + self.clean_seconds

    def failed(self, client_id: str | None, address: str | None) -> None:
        for limit, key in self._keys(client_id, address):
            self._clean.pop(key, None)
            self._storage_call(self.limiter.hit, limit, *key)

    @staticmethod
    def _storage_call(method: Callable[..., Any], *args: Any) -> Any:
        """Fail closed: without its counters (Redis down) the guard refuses rather than lets guesses through."""
        try:
            return method(*args)
        except Exception as exc:  # the storage backend's own errors (redis, network)
            raise TemporarilyUnavailable("the rate-limit storage is not available; retry shortly", headers={"Retry-After": "1"}) from exc


def single_param(params: Params, name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"parameter {name} is repeated")
    return values[0]


def _parse_basic(authorization: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1 / RFC 7617: base64 of form-urlencoded id and secret joined by a colon."""
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidClient("malformed HTTP Basic credentials", headers={"WWW-Authenticate": 'Basic realm="tokendealer"'}) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("malformed HTTP Basic credentials", headers={"WWW-Authenticate": 'Basic realm="tokendealer"'})
    return unquote_plus(client_id), unquote_plus(secret)


class ClientAuthenticator:
    """Finds who is calling and checks the proof: exactly one method per request."""

    def __init__(
        self,
        clients: ClientStore,
        hasher: SecretHasher,
        assertions: AssertionVerifier,
        guard: AuthFailureGuard | None,
        clock: Callable[[], float] = time.time,
    ):
        self.clients = clients
        self.hasher = hasher
        self.assertions = assertions
        self.guard = guard
        self.clock = clock

    def credentials(self, params: Params, authorization: str | None) -> Credentials:
        """The credentials a request carries, or InvalidRequest/InvalidClient if they are absent or mixed."""
        basic = authorization is not None and authorization[:6].lower() == "basic "
        body_id = single_param(params, "client_id")
        secret = single_param(params, "client_secret")
        assertion = single_param(params, "client_assertion")
        assertion_type = single_param(params, "client_assertion_type")
        used = [basic, secret is not None, assertion is not None or assertion_type is not None]
        if sum(used) > 1:
            raise InvalidRequest("use exactly one client authentication method")
        if basic:
            client_id, basic_secret = _parse_basic(authorization)
            if body_id is not None and body_id != client_id:
                raise InvalidRequest("client_id in the body differs from the HTTP Basic one")
            return Credentials(client_id[:MAX_CLIENT_ID], "client_secret_basic", secret=basic_secret)
        if secret is not None:
            if not body_id:
                raise InvalidRequest("client_secret given without client_id")
            return Credentials(body_id[:MAX_CLIENT_ID], "client_secret_post", secret=secret)
        if assertion is not None or assertion_type is not None:
            if assertion_type != ASSERTION_TYPE:
                raise InvalidRequest(f"client_assertion_type must be {ASSERTION_TYPE}")
            if not assertion:
                raise InvalidRequest("client_assertion is missing")
            client_id = self.assertions.claimed_client_id(assertion)
            if body_id is not None and body_id != client_id:
                raise InvalidClient("client_id differs from the client_assertion subject")
            return Credentials(client_id[:MAX_CLIENT_ID], "private_key_jwt", assertion=assertion)
        raise InvalidClient("client authentication is required", headers={"WWW-Authenticate": 'Basic realm="tokendealer"'})

    def authenticate(self, params: Params, authorization: str | None, address: str | None) -> tuple[Client, Credentials]:
        """The authenticated client, or raise InvalidClient (401) / TooManyRequests (429)."""
        try:
            creds = self.credentials(params, authorization)
        except InvalidClient:
            if self.guard:
                self.guard.check(None, address)
                self.guard.failed(None, address)
            raise
        if self.guard:
            try:
                self.guard.check(creds.client_id, address)
            except TooManyRequests as exc:
                exc.client_id = creds.client_id  # for the audit log
                raise
        try:
            return self._verify(creds), creds
        except InvalidClient as exc:
            # Only a failed proof counts; an outage (503) during the check is not the caller's failure.
            if self.guard:
                self.guard.failed(creds.client_id, address)
            exc.client_id = creds.client_id
            raise

    def _verify(self, creds: Credentials) -> Client:
        headers = {"WWW-Authenticate": 'Basic realm="tokendealer"'} if creds.method == "client_secret_basic" else {}
        client = self.clients.get(creds.client_id)
        if creds.method == "private_key_jwt":
            if client is None or not client.enabled or client.secret_hash:
                raise InvalidClient("client is unknown, disabled, or not registered for private_key_jwt")
            self.assertions.verify(client, creds.assertion)
            return client
        if client is None or not client.secret_hash:
            # The same hashing work as a real check, so timing does not tell unknown ids apart.
            self.hasher.hash(creds.secret)
            raise InvalidClient("client authentication failed", headers=headers)
        if not self.hasher.matches(client, creds.secret, self.clock()) or not client.enabled:
            raise InvalidClient("client authentication failed", headers=headers)
        return client
