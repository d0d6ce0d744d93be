"""TokenClient: fetch, cache and refresh client-credentials and exchanged tokens (requests); TokenAuth attaches them."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import requests

from . import tracing
from .core.credentials import Credentials
from .core.dpop import DPoPKey, asks_for_nonce, presentation
from .core.failures import network_failure
from .core.origins import PinnedAuth
from .core.retries import RetrySchedule, retryable_status
from .core.tokens import CacheKey, TokenCache, dpop_key, exchange_form, exchange_key, token_error, token_form, token_response
from .discovery import discover
from .exceptions import TokenRequestError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (3.05, 10.0)


class TokenClient:
    """Client-credentials tokens for one client, one cached token per (audience, scope).

    A token is served from the cache until it turns stale; then one caller refreshes it while the others
    keep the still-valid old token. An expired token is never returned. One request is in flight per key.

    `dpop_key` (a private key object, a PEM path/bytes/text, or True for a new in-memory ES256 key) makes every
    token DPoP-bound (RFC 9449): each token request carries a fresh proof, a `use_dpop_nonce` answer is retried
    once with the server's nonce, and TokenAuth/HttpxTokenAuth present the tokens with proofs.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str | None = None,
        *,
        private_key: Any = None,
        key_id: str | None = None,
        federated_token_file: str | os.PathLike[str] | None = None,
        dpop_key: Any = None,
        cert: tuple[str, str] | None = None,
        token_endpoint: str | None = None,
        session: requests.Session | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff: float = 0.2,
        retry_budget: float = 10.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.issuer = issuer
        self.client_id = client_id
        self.credentials = Credentials(client_id, client_secret, private_key, key_id, clock, federated_token_file, tls=cert is not None)
        # RFC 8705: (certificate file, key file) presented in the TLS handshake of each token request.
        self.cert = cert
        self.dpop = DPoPKey(dpop_key, clock) if dpop_key is not None and dpop_key is not False else None
        self.token_type = "DPoP" if self.dpop else "Bearer"
        self._token_endpoint = token_endpoint
        self._metadata: dict[str, Any] | None = None
        self.session = session or requests.Session()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retry_budget = retry_budget
        self.clock = clock
        self.sleep = sleep
        self.cache = TokenCache()
        self._locks: dict[CacheKey, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def from_env(cls, **kwargs: Any) -> TokenClient:
        """Built from TOKENDEALER_URL, TOKENDEALER_CLIENT_ID and TOKENDEALER_CLIENT_SECRET."""
        try:
            return cls(
                os.environ["TOKENDEALER_URL"], os.environ["TOKENDEALER_CLIENT_ID"], os.environ["TOKENDEALER_CLIENT_SECRET"], **kwargs
            )
        except KeyError as exc:
            raise ValueError(f"environment variable {exc.args[0]} is not set") from None

    def __repr__(self) -> str:
        return f"TokenClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    @property
    def metadata(self) -> dict[str, Any]:
        """The issuer's metadata, fetched once."""
        if self._metadata is None:
            self._metadata = discover(self.session, self.issuer, self.timeout)
        return self._metadata

    @property
    def token_endpoint(self) -> str:
        if self._token_endpoint is None:
            self._token_endpoint = self.metadata["token_endpoint"]
        return self._token_endpoint

    def get_token(self, audience: str | None = None, scope: str | None = None) -> str:
        """A valid access token for (audience, scope), from the cache when fresh."""
        return self._cached(dpop_key((audience, scope), self.dpop is not None), token_form(audience, scope))

    def exchange(self, subject_token: str, audience: str | None = None, scope: str | None = None) -> str:
        """RFC 8693: `subject_token` (a token this service received, meant for it) exchanged for one meant for
        `audience`, acting for its caller; cached per (the subject token's jti, audience, scope) like any token."""
        key = dpop_key(exchange_key(subject_token, audience, scope), self.dpop is not None)
        return self._cached(key, exchange_form(subject_token, audience, scope))

    def _cached(self, key: CacheKey, form: dict[str, str]) -> str:
        token = self.cache.fresh(key, self.clock())
        if token is not None:
            return token
        lock = self._lock(key)
        if self.cache.usable(key, self.clock()) is not None:
            if lock.acquire(blocking=False):
                try:
                    self._refresh(key, form)
                except Exception as exc:  # the old token is still valid: keep serving it
                    log.warning("token refresh failed, serving the cached token: %s", exc)
                finally:
                    lock.release()
            token = self.cache.usable(key, self.clock())
            if token is not None:
                return token
        with lock:
            return self.cache.fresh(key, self.clock()) or self._refresh(key, form)

    def invalidate(self, token: str) -> None:
        """Forget a token the resource server refused, so the next call fetches a new one."""
        self.cache.invalidate(token)

    def fetch_token_response(self, audience: str | None = None, scope: str | None = None) -> dict[str, Any]:
        """A new token response from the server, bypassing the cache."""
        return self._request(token_form(audience, scope))

    def client_auth(self, audience: str | None = None) -> tuple[dict[str, str], tuple[str, str] | None]:
        """Form fields and HTTP Basic pair that authenticate this client at `audience` (default: token endpoint)."""
        return self.credentials.auth(audience or self.token_endpoint)

    def _lock(self, key: CacheKey) -> threading.Lock:
        lock = self._locks.get(key)
        if lock is None:
            with self._locks_guard:
                if len(self._locks) >= self.cache.size:  # one lock per exchanged token: bounded like the cache
                    self._locks = {k: v for k, v in self._locks.items() if v.locked()}
                lock = self._locks.setdefault(key, threading.Lock())
        return lock

    def _refresh(self, key: CacheKey, form: dict[str, str]) -> str:
        requested_at = self.clock()
        return self.cache.store(key, self._request(form), requested_at)

    @tracing.traced("fetch token", kind="client")
    def _request(self, form: dict[str, str]) -> dict[str, Any]:
        """POST to the token endpoint with retries on network errors, 5xx and 429, and once at once with a new
        DPoP nonce the server asks for (RFC 9449 §8)."""
        tracing.annotate(client_id=self.client_id, grant_type=form.get("grant_type"), audience=form.get("audience"))
        endpoint = self.token_endpoint
        schedule = RetrySchedule(endpoint, self.retries, self.backoff, self.retry_budget)
        nonce_retried = False
        while True:
            fields, basic = self.client_auth()
            headers: dict[str, str] = tracing.inject({})
            if self.dpop is not None:
                headers["DPoP"] = self.dpop.proof("POST", endpoint)
            try:
                response = self.session.post(
                    endpoint, data={**form, **fields}, auth=basic, timeout=self.timeout, headers=headers, cert=self.cert
                )
            except requests.RequestException as exc:
                self.sleep(schedule.next_wait(network_failure(exc)))
                continue
            tracing.annotate(status=response.status_code)
            new_nonce = self.dpop is not None and self.dpop.remember_nonce(endpoint, response.headers.get("DPoP-Nonce"))
            if response.status_code == 200:
                try:
                    return token_response(response.json(), self.token_type)
                except ValueError as exc:
                    raise TokenRequestError("invalid_response", str(exc), 200) from None
            if not retryable_status(response.status_code):
                error = token_error(response)
                if error.error == "use_dpop_nonce" and new_nonce and not nonce_retried:
                    nonce_retried = True
                    continue
                raise error
            self.sleep(schedule.next_wait(f"HTTP {response.status_code}", response.headers.get("Retry-After")))


# Requests TokenAuth has sent again after a 401 (each is retried at most once).
_RETRIED: weakref.WeakSet[requests.PreparedRequest] = weakref.WeakSet()


class TokenAuth(PinnedAuth[TokenClient], requests.auth.AuthBase):
    """requests auth that sends `Authorization: Bearer` to one origin only, so a token never reaches a party
    it was not obtained for: `origin` (any URL of it), or else the origin of the first request it
    authenticates. Requests to any other origin get no token from it, and its token is taken off a redirect
    to one. On a 401 `invalid_token` from its origin, it retries once with a new token when the body can be
    sent again. With a DPoP client it sends `Authorization: DPoP` and a fresh proof for each request, and on a
    401 `use_dpop_nonce` retries once with the nonce (RFC 9449 §7.1, §9)."""

    def _token(self) -> str:
        if self.subject_token is not None:
            return self.client.exchange(self.subject_token, self.audience, self.scope)
        return self.client.get_token(self.audience, self.scope)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.pin.admits(request.url or ""):
            self._present(request, self._token())
            tracing.inject(request.headers)
            request.register_hook("response", self._strip_before_leaving)
            request.register_hook("response", self._retry_on_invalid_token)
        return request

    def _strip_before_leaving(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """On a redirect to another origin, take the token off the request requests copies to follow it
        (its own rule keeps the token from http://host to https://host)."""
        location = response.headers.get("Location") if response.is_redirect else None
        if location is not None and not self.pin.admits(urljoin(response.url, location)):
            response.request.headers.pop("Authorization", None)
            response.request.headers.pop("DPoP", None)
        return response

    def _retry_on_invalid_token(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """RFC 6750 §3.1: a 401 `invalid_token` from our origin drops that token; the request goes once more
        with a new one. The same request object is sent again, so a redirect is followed from it."""
        request = response.request
        if response.status_code != 401 or request in _RETRIED or not self.pin.admits(request.url or ""):
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        dpop = self.client.dpop
        new_nonce = (
            dpop is not None
            and asks_for_nonce(401, challenge)
            and dpop.remember_nonce(request.url or "", response.headers.get("DPoP-Nonce"))
        )
        if not new_nonce and "invalid_token" not in challenge:
            return response
        if request.body is not None and not isinstance(request.body, (bytes, str)):
            return response  # a stream cannot be replayed
        token = request.headers.get("Authorization", "").partition(" ")[2]
        if not new_nonce:
            self.client.invalidate(token)
            token = self._token()
        response.content  # noqa: B018 (drain, so the connection can be reused)
        response.close()
        _RETRIED.add(request)
        self._present(request, token)
        new_response = response.connection.send(request, **kwargs)
        new_response.history.append(response)
        return self._strip_before_leaving(new_response)

    def _present(self, request: requests.PreparedRequest, token: str) -> None:
        """Put the token (and, for DPoP, a new proof for this request: never a reused one) on the request."""
        request.headers.update(presentation(token, self.client.dpop, request.method or "GET", request.url or ""))
