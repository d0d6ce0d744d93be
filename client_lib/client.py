"""TokenClient: fetch, cache and refresh client-credentials tokens (requests); TokenAuth attaches them."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from .core import (
    CachedToken,
    backoff_delays,
    client_assertion,
    load_private_key,
    retry_after_seconds,
    retryable_status,
    signing_algorithm,
    token_response,
)
from .exceptions import DiscoveryError, TokenEndpointUnavailable, TokenRequestError

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_TIMEOUT = (3.05, 10.0)


def discover(session: requests.Session, issuer: str, timeout: Any) -> dict[str, Any]:
    """RFC 8414 metadata of `issuer` (OIDC discovery as fallback); its `issuer` must match exactly."""
    base = issuer.rstrip("/")
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        try:
            response = session.get(base + path, timeout=timeout)
        except requests.RequestException as exc:
            raise DiscoveryError(f"cannot reach {base + path}: {exc.__class__.__name__}") from None
        if response.status_code == 200:
            try:
                metadata = response.json()
            except ValueError:
                raise DiscoveryError(f"{base + path} did not return JSON") from None
            if not isinstance(metadata, dict) or metadata.get("issuer") != issuer:
                raise DiscoveryError(f"metadata issuer does not match {issuer!r} (RFC 8414 §3.3)")
            return metadata
    raise DiscoveryError(f"no authorization server metadata at {base}")


class TokenClient:
    """Client-credentials tokens for one client, one cached token per (audience, scope).

    A token is served from the cache until it turns stale; then one caller refreshes it while the others
    keep the still-valid old token. An expired token is never returned. One request is in flight per key.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str | None = None,
        *,
        private_key: Any = None,
        key_id: str | None = None,
        token_endpoint: str | None = None,
        session: requests.Session | None = None,
        timeout: Any = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff: float = 0.2,
        retry_budget: float = 10.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if (client_secret is None) == (private_key is None):
            raise ValueError("give exactly one of client_secret and private_key")
        self.issuer = issuer
        self.client_id = client_id
        self._secret = client_secret
        self._key = load_private_key(private_key) if private_key is not None else None
        self._alg = signing_algorithm(self._key) if self._key is not None else None
        self.key_id = key_id
        self._token_endpoint = token_endpoint
        self._metadata: dict[str, Any] | None = None
        self.session = session or requests.Session()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retry_budget = retry_budget
        self.clock = clock
        self.sleep = sleep
        self._tokens: dict[tuple[str | None, str | None], CachedToken] = {}
        self._locks: dict[tuple[str | None, str | None], threading.Lock] = {}
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

    # ---- discovery ----

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

    # ---- tokens ----

    def get_token(self, audience: str | None = None, scope: str | None = None) -> str:
        """A valid access token for (audience, scope), from the cache when fresh."""
        key = (audience, scope)
        entry = self._tokens.get(key)
        now = self.clock()
        if entry is not None and now < entry.stale_at:
            return entry.access_token
        lock = self._lock(key)
        if entry is not None and entry.usable(now):
            if lock.acquire(blocking=False):
                try:
                    self._refresh(key)
                except Exception as exc:  # the old token is still valid: keep serving it
                    log.warning("token refresh failed, serving the cached token: %s", exc)
                finally:
                    lock.release()
            entry = self._tokens.get(key, entry)
            if entry.usable(self.clock()):
                return entry.access_token
        with lock:
            entry = self._tokens.get(key)
            if entry is not None and entry.fresh(self.clock()):
                return entry.access_token
            return self._refresh(key).access_token

    def invalidate(self, token: str) -> None:
        """Forget a token the resource server refused, so the next call fetches a new one."""
        for key, entry in list(self._tokens.items()):
            if entry.access_token == token:
                self._tokens.pop(key, None)

    def fetch_token_response(self, audience: str | None = None, scope: str | None = None) -> dict[str, Any]:
        """A new token response from the server, bypassing the cache."""
        return self._request(self._form(audience, scope))

    def client_auth(self, audience: str | None = None) -> tuple[dict[str, str], tuple[str, str] | None]:
        """Form fields and HTTP Basic pair that authenticate this client (RFC 6749 §2.3.1, RFC 7523)."""
        if self._key is not None:
            assertion = client_assertion(self.client_id, audience or self.token_endpoint, self._key, self._alg, self.key_id, self.clock())
            return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}, None
        from urllib.parse import quote_plus  # noqa: PLC0415

        return {}, (quote_plus(self.client_id), quote_plus(self._secret))

    def _lock(self, key: tuple[str | None, str | None]) -> threading.Lock:
        lock = self._locks.get(key)
        if lock is None:
            with self._locks_guard:
                lock = self._locks.setdefault(key, threading.Lock())
        return lock

    def _form(self, audience: str | None, scope: str | None) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if audience:
            form["audience"] = audience
        if scope:
            form["scope"] = scope
        return form

    def _refresh(self, key: tuple[str | None, str | None]) -> CachedToken:
        before = self.clock()
        entry = CachedToken.from_response(self._request(self._form(*key)), before)
        self._tokens[key] = entry
        return entry

    def _request(self, form: dict[str, str]) -> dict[str, Any]:
        """POST to the token endpoint with retries on network errors, 5xx and 429."""
        delays = iter(backoff_delays(self.retries, self.backoff, 5.0, self.retry_budget))
        while True:
            fields, basic = self.client_auth()
            try:
                response = self.session.post(self.token_endpoint, data={**form, **fields}, auth=basic, timeout=self.timeout)
            except requests.RequestException as exc:
                problem, wait = f"{exc.__class__.__name__}", None
            else:
                if response.status_code == 200:
                    try:
                        return token_response(response.json())
                    except ValueError as exc:
                        raise TokenRequestError("invalid_response", str(exc), 200) from None
                if not retryable_status(response.status_code):
                    raise _request_error(response)
                problem = f"HTTP {response.status_code}"
                wait = retry_after_seconds(response.headers.get("Retry-After"), 0.0, self.retry_budget)
            delay = next(delays, None)
            if delay is None:
                raise TokenEndpointUnavailable(f"token endpoint {self.token_endpoint} failed: {problem}")
            self.sleep(max(delay, wait or 0.0))


def _request_error(response: requests.Response) -> TokenRequestError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return TokenRequestError(str(body.get("error") or f"http_{response.status_code}"), body.get("error_description"), response.status_code)


class TokenAuth(requests.auth.AuthBase):
    """requests auth that sends `Authorization: Bearer`; on a 401 `invalid_token`, retries once with a
    new token when the body can be sent again."""

    def __init__(self, client: TokenClient, audience: str | None = None, scope: str | None = None):
        self.client = client
        self.audience = audience
        self.scope = scope

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.client.get_token(self.audience, self.scope)}"
        request.register_hook("response", self._retry_on_invalid_token)
        return request

    def _retry_on_invalid_token(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, "_tokendealer_retried", False):
            return response
        if "invalid_token" not in response.headers.get("WWW-Authenticate", ""):
            return response
        if request.body is not None and not isinstance(request.body, (bytes, str)):
            return response  # a stream cannot be replayed
        sent = request.headers.get("Authorization", "")[7:]
        self.client.invalidate(sent)
        response.content  # noqa: B018 (drain, so the connection can be reused)
        response.close()
        retry = request.copy()
        retry._tokendealer_retried = True
        retry.headers["Authorization"] = f"Bearer {self.client.get_token(self.audience, self.scope)}"
        new_response = response.connection.send(retry, **kwargs)
        new_response.history.append(response)
        new_response.request = retry
        return new_response
