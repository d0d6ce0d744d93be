"""Client authentication at the token, introspection and revocation endpoints (RFC 6749 §2.3, RFC 7523),
with the throttle that answers repeated failures."""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from . import tracing
from .assertions import ASSERTION_TYPE, AssertionVerifier
from .audit import AuditLog
from .clients import Client, ClientStore, SecretHasher
from .errors import InvalidClient, InvalidRequest, OAuthError, TooManyRequests
from .federation import Admission, FederationRefused, FederationVerifier, WorkloadToken
from .messages import ClientAuth
from .mtls import CertificateAuthenticator

log = logging.getLogger(__name__)

MAX_CLIENT_ID = 256


@dataclass(slots=True)
class Credentials:
    """What a request presents: the claimed client id and how it proves it."""

    client_id: str
    # client_secret_basic | client_secret_post | private_key_jwt | federated | tls_client_auth (or, once the
    # client's registration says so, self_signed_tls_client_auth)
    method: str
    secret: str | None = None
    assertion: str | None = None
    # A federated assertion as parsed once; once verified, the issuer and rule that admitted it.
    workload_token: WorkloadToken | None = field(default=None, repr=False)
    admission: Admission | None = None

    def audit_fields(self) -> dict[str, Any]:
        """What the audit log records of how the client proved itself (never the proof)."""
        return self.admission.audit_fields() if self.admission else {}


class FailureThrottle:
    """Failed client authentications, counted per client id and per address; past a limit,
    further *failed* attempts are answered 429 with `Retry-After` instead of 401.

    Credentials are checked first, so valid ones always pass, whoever failed before, and success never
    touches the counters. Once a key is over its limit this process remembers it until the window resets:
    further failures cost no storage round trip, and they are audited with one line per period (carrying
    the number refused in the period before) instead of one line each.

    With `memory://` storage each of the instance's `processes` counts alone, so each enforces its share of
    the limit and the instance as a whole never allows more failures than configured.
    """

    def __init__(
        self,
        storage_uri: str,
        per_client: str,
        per_address: str,
        audit: AuditLog,
        monotonic: Callable[[], float] = time.monotonic,
        processes: int = 1,
    ):
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))
        share = max(1, processes) if storage_uri.startswith("memory://") else 1
        self.per_client = [_share(limit, share) for limit in parse_many(per_client)]
        self.per_address = [_share(limit, share) for limit in parse_many(per_address)]
        self.audit = audit
        self.monotonic = monotonic
        self._periods: dict[tuple[str, str], _Period] = {}
        self._storage_down = False

    def _keys(self, client_id: str | None, address: str | None) -> list[tuple[RateLimitItem, tuple[str, str]]]:
        out = []
        if client_id:
            out += [(limit, ("client_id", client_id)) for limit in self.per_client]
        if address:
            out += [(limit, ("remote_addr", address)) for limit in self.per_address]
        return out

    def failed(self, client_id: str | None, address: str | None) -> TooManyRequests | None:
        """Count one failed attempt; the 429 to answer instead of the failure once a limit is passed."""
        now = self.monotonic()
        keys = self._keys(client_id, address)
        for _, key in keys:
            period = self._periods.get(key)
            if period is not None and period.until > now:
                period.refused += 1
                return _throttled(period.until - now)
        for limit, key in keys:
            try:
                if self.limiter.hit(limit, *key):
                    continue
                reset_at, _ = self.limiter.get_window_stats(limit, *key)
            except Exception as exc:  # the storage backend's own errors (redis, network)
                # Fail open: valid credentials never reach here, and a failed attempt is answered 401 anyway.
                if not self._storage_down:
                    log.error("failed-authentication counters unavailable: %s", exc.__class__.__name__)
                self._storage_down = True
                return None
            self._storage_down = False
            # The limits library's windows run on the real clock, whatever clock the rest of the server is given.
            return self._start_period(key, limit, max(1.0, reset_at - time.time()), now)
        return None

    def _start_period(self, key: tuple[str, str], limit: RateLimitItem, retry_after: float, now: float) -> TooManyRequests:
        previous = self._periods.pop(key, None)
        if len(self._periods) > 100_000:
            self._periods = {k: p for k, p in self._periods.items() if p.until > now}
        self._periods[key] = _Period(until=now + retry_after)
        kind, value = key
        self.audit.emit(
            "auth.throttled",
            outcome="refused",
            limit=str(limit),
            retry_after=int(retry_after) + 1,
            refused_in_previous_period=previous.refused if previous else 0,
            **{kind: value},
        )
        return _throttled(retry_after)


@dataclass
class _Period:
    """A key over its limit in this process: until when, and how many attempts it refused meanwhile."""

    until: float
    refused: int = 0


def _share(limit: RateLimitItem, processes: int) -> RateLimitItem:
    """The part of `limit` one of `processes` enforces."""
    return type(limit)(max(1, math.ceil(limit.amount / processes)), limit.multiples, limit.namespace)


def _throttled(retry_after: float) -> TooManyRequests:
    exc = TooManyRequests("too many failed client authentications; retry later", headers={"Retry-After": str(int(retry_after) + 1)})
    exc.logged = True  # audited once per period by FailureThrottle, not per attempt
    return exc


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
        throttle: FailureThrottle | None,
        clock: Callable[[], float] = time.time,
        federation: FederationVerifier | None = None,
        certificates: CertificateAuthenticator | None = None,
    ):
        self.clients = clients
        self.hasher = hasher
        self.assertions = assertions
        self.throttle = throttle
        self.clock = clock
        self.federation = federation
        self.certificates = certificates
        # Told of each client that authenticated (TOKENDEALER_RATELIMIT counts per client only those requests).
        self.on_authenticated: Callable[[Client], None] | None = None

    def credentials(self, auth: ClientAuth) -> Credentials:
        """The credentials a request carries, or InvalidRequest/InvalidClient if they are absent or mixed."""
        basic = auth.authorization is not None and auth.authorization[:6].lower() == "basic "
        used = [basic, auth.client_secret is not None, auth.assertion is not None or auth.assertion_type is not None]
        if sum(used) > 1:
            raise InvalidRequest("use exactly one client authentication method")
        if basic:
            client_id, basic_secret = _parse_basic(auth.authorization or "")
            if auth.client_id is not None and auth.client_id != client_id:
                raise InvalidRequest("client_id in the body differs from the HTTP Basic one")
            return Credentials(client_id[:MAX_CLIENT_ID], "client_secret_basic", secret=basic_secret)
        if auth.client_secret is not None:
            if not auth.client_id:
                raise InvalidRequest("client_secret given without client_id")
            return Credentials(auth.client_id[:MAX_CLIENT_ID], "client_secret_post", secret=auth.client_secret)
        if auth.assertion is not None or auth.assertion_type is not None:
            if auth.assertion_type != ASSERTION_TYPE:
                raise InvalidRequest(f"client_assertion_type must be {ASSERTION_TYPE}")
            if not auth.assertion:
                raise InvalidRequest("client_assertion is missing")
            workload_token = self.federation.workload_token(auth.assertion) if self.federation else None
            if workload_token is not None:
                # A workload token's sub is the workload, not the client: the client is named by client_id.
                if not auth.client_id:
                    raise InvalidRequest("client_id is required with a client_assertion from an external issuer")
                return Credentials(auth.client_id[:MAX_CLIENT_ID], "federated", workload_token=workload_token)
            client_id = self.assertions.claimed_client_id(auth.assertion)
            if auth.client_id is not None and auth.client_id != client_id:
                raise InvalidClient("client_id differs from the client_assertion subject")
            return Credentials(client_id[:MAX_CLIENT_ID], "private_key_jwt", assertion=auth.assertion)
        if auth.certificate is not None and auth.client_id:
            # RFC 8705 §2: with no other proof, the certificate is the proof and client_id names the client.
            # With another proof it only binds the tokens (§3).
            return Credentials(auth.client_id[:MAX_CLIENT_ID], "tls_client_auth")
        raise InvalidClient("client authentication is required", headers={"WWW-Authenticate": 'Basic realm="tokendealer"'})

    def claimed_client_id(self, auth: ClientAuth) -> str | None:
        """The client id a request claims, before any proof is checked (for per-client request limits)."""
        try:
            return self.credentials(auth).client_id
        except OAuthError:
            return None

    @tracing.traced("client authentication")
    def authenticate(self, auth: ClientAuth) -> tuple[Client, Credentials]:
        """The authenticated client, or raise InvalidClient (401), or TooManyRequests (429) for a failure
        past the limits; valid credentials are never refused because of earlier failures."""
        creds = None
        try:
            creds = self.credentials(auth)
            tracing.annotate_request(client_id=creds.client_id, auth_method=creds.method)
            if creds.method == "federated":
                client, creds = self._federated(creds)
            elif creds.method == "tls_client_auth":
                client, creds = self._certificate(creds, auth)
            else:
                client = self._verify(creds)
        except InvalidClient as exc:
            # Only a failed proof counts; an outage (503) during the check is not the caller's failure.
            self.failed(exc, creds.client_id if creds else None, auth.address)
            raise
        if self.on_authenticated is not None:
            self.on_authenticated(client)
        return client, creds

    def failed(self, exc: OAuthError, client_id: str | None, address: str | None) -> None:
        """Count a failed authentication (also a refused JWT bearer assertion); raise the 429 instead of
        `exc` once a limit is passed."""
        exc.client_id = client_id
        throttled = self.throttle.failed(client_id, address) if self.throttle else None
        if throttled is not None:
            throttled.client_id = client_id
            raise throttled from None

    def _federated(self, creds: Credentials) -> tuple[Client, Credentials]:
        if self.federation is None or creds.workload_token is None:
            raise InvalidClient("federated client authentication is not enabled")
        try:
            admission = self.federation.authenticate(creds.client_id, creds.workload_token)
        except FederationRefused as exc:
            raise InvalidClient(str(exc)) from None
        return admission.client, Credentials(creds.client_id, creds.method, admission=admission)

    def _certificate(self, creds: Credentials, auth: ClientAuth) -> tuple[Client, Credentials]:
        """RFC 8705 §2.1 / §2.2: the presented certificate authenticates a client registered without a secret."""
        client = self.clients.get(creds.client_id)
        if self.certificates is None or auth.certificate is None:
            raise InvalidClient("certificate client authentication is not enabled")
        if client is None or not client.enabled or client.secret_hash:
            raise InvalidClient("client is unknown, disabled, or not registered for certificate authentication")
        method = self.certificates.authenticate(client, auth.certificate)
        return client, Credentials(creds.client_id, method)

    def _verify(self, creds: Credentials) -> Client:
        headers = {"WWW-Authenticate": 'Basic realm="tokendealer"'} if creds.method == "client_secret_basic" else {}
        client = self.clients.get(creds.client_id)
        if creds.method == "private_key_jwt":
            if client is None or not client.enabled or client.secret_hash or creds.assertion is None:
                raise InvalidClient("client is unknown, disabled, or not registered for private_key_jwt")
            self.assertions.verify(client, creds.assertion)
            return client
        secret = creds.secret or ""
        if client is None or not client.secret_hash:
            # The same hashing work as a real check, so timing does not tell unknown ids apart.
            self.hasher.hash(secret)
            raise InvalidClient("client authentication failed", headers=headers)
        if not self.hasher.matches(client, secret, self.clock()) or not client.enabled:
            raise InvalidClient("client authentication failed", headers=headers)
        return client
