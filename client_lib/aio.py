"""Async shells (httpx) over the same I/O-free core as the sync client: AsyncTokenClient, AsyncTokenVerifier.

Needs the `httpx` extra: `pip install './client_lib[httpx]'`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from . import tracing
from .core.credentials import Credentials
from .core.dpop import MAX_AGE, DPoPKey, DPoPProof, MemoryProofReplay, Nonces, ProofCheck, replay_key
from .core.failures import network_failure
from .core.retries import RetrySchedule, retryable_status
from .core.tokens import CacheKey, TokenCache, dpop_key, exchange_form, exchange_key, token_error, token_form, token_response
from .core.verification import Verification
from .discovery import discover_async
from .exceptions import DiscoveryError, InvalidDPoPProof, KeySetUnavailable, RevokedToken, TokenRequestError
from .proof_replay import proof_replay

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.05)


def _basic_auth(basic: tuple[str, str] | None) -> dict[str, Any]:
    """httpx's `auth=` for an HTTP Basic pair; none at all (not `auth=None`) without one."""
    return {"auth": basic} if basic is not None else {}


def _tls_context(cert: tuple[str, str] | None) -> ssl.SSLContext | bool:
    """httpx's default verification, presenting `cert` (certificate file, key file) when given (RFC 8705)."""
    if cert is None:
        return True
    context = httpx.create_ssl_context()
    context.load_cert_chain(*cert)
    return context


class _LoopLocks:
    """asyncio locks per (event loop, key): single-flight within each loop."""

    def __init__(self, size: int = 10000) -> None:
        self.size = size
        self._locks: dict[tuple[int, Any], asyncio.Lock] = {}

    def get(self, key: Any) -> asyncio.Lock:
        loop_key = (id(asyncio.get_running_loop()), key)
        lock = self._locks.get(loop_key)
        if lock is None:
            if len(self._locks) >= self.size:  # one lock per exchanged token: bounded like the cache
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[loop_key] = asyncio.Lock()
        return lock


class AsyncTokenClient:
    """The async twin of TokenClient: the same cache, refresh, single-flight, retry, DPoP and error rules."""

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
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff: float = 0.2,
        retry_budget: float = 10.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        self.issuer = issuer
        self.client_id = client_id
        self.credentials = Credentials(client_id, client_secret, private_key, key_id, clock, federated_token_file, tls=cert is not None)
        self.dpop = DPoPKey(dpop_key, clock) if dpop_key is not None and dpop_key is not False else None
        self.token_type = "DPoP" if self.dpop else "Bearer"
        self._token_endpoint = token_endpoint
        self._metadata: dict[str, Any] | None = None
        # httpx presents a client certificate per client, not per request: a given `http` must carry `cert` itself.
        self.http = http or httpx.AsyncClient(timeout=timeout, verify=_tls_context(cert))
        self.retries = retries
        self.backoff = backoff
        self.retry_budget = retry_budget
        self.clock = clock
        self.sleep = sleep
        self.cache = TokenCache()
        self._locks = _LoopLocks()

    def __repr__(self) -> str:
        return f"AsyncTokenClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def metadata(self) -> dict[str, Any]:
        """The issuer's metadata, fetched once."""
        if self._metadata is None:
            self._metadata = await discover_async(self.http, self.issuer)
        return self._metadata

    async def token_endpoint(self) -> str:
        if self._token_endpoint is None:
            self._token_endpoint = (await self.metadata())["token_endpoint"]
        return self._token_endpoint

    async def get_token(self, audience: str | None = None, scope: str | None = None) -> str:
        """A valid access token for (audience, scope), from the cache when fresh."""
        return await self._cached(dpop_key((audience, scope), self.dpop is not None), token_form(audience, scope))

    async def exchange(self, subject_token: str, audience: str | None = None, scope: str | None = None) -> str:
        """RFC 8693: `subject_token` (a token this service received, meant for it) exchanged for one meant for
        `audience`, acting for its caller; cached per (the subject token's jti, audience, scope) like any token."""
        key = dpop_key(exchange_key(subject_token, audience, scope), self.dpop is not None)
        return await self._cached(key, exchange_form(subject_token, audience, scope))

    async def _cached(self, key: CacheKey, form: dict[str, str]) -> str:
        token = self.cache.fresh(key, self.clock())
        if token is not None:
            return token
        lock = self._locks.get(key)
        if self.cache.usable(key, self.clock()) is not None:
            if not lock.locked():
                async with lock:
                    try:
                        await self._refresh(key, form)
                    except Exception as exc:  # the old token is still valid: keep serving it
                        log.warning("token refresh failed, serving the cached token: %s", exc)
            token = self.cache.usable(key, self.clock())
            if token is not None:
                return token
        async with lock:
            return self.cache.fresh(key, self.clock()) or await self._refresh(key, form)

    def invalidate(self, token: str) -> None:
        self.cache.invalidate(token)

    async def client_auth(self, audience: str | None = None) -> tuple[dict[str, str], tuple[str, str] | None]:
        return self.credentials.auth(audience or await self.token_endpoint())

    async def _refresh(self, key: CacheKey, form: dict[str, str]) -> str:
        requested_at = self.clock()
        return self.cache.store(key, await self._request(form), requested_at)

    @tracing.traced("fetch token", kind="client")
    async def _request(self, form: dict[str, str]) -> dict[str, Any]:
        tracing.annotate(client_id=self.client_id, grant_type=form.get("grant_type"), audience=form.get("audience"))
        endpoint = await self.token_endpoint()
        schedule = RetrySchedule(endpoint, self.retries, self.backoff, self.retry_budget)
        nonce_retried = False
        while True:
            fields, basic = await self.client_auth()
            headers: dict[str, str] = tracing.inject({})
            if self.dpop is not None:
                headers["DPoP"] = self.dpop.proof("POST", endpoint)
            try:
                response = await self.http.post(endpoint, data={**form, **fields}, **_basic_auth(basic), headers=headers)
            except httpx.HTTPError as exc:
                await self.sleep(schedule.next_wait(network_failure(exc)))
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
                    nonce_retried = True  # RFC 9449 §8: once more at once, with the nonce the server asked for
                    continue
                raise error
            await self.sleep(schedule.next_wait(f"HTTP {response.status_code}", response.headers.get("Retry-After")))


class AsyncTokenVerifier:
    """The async twin of TokenVerifier: the same JWKS cache, cooldown, stale-if-error and verified-token
    cache; key fetches are awaited, so the event loop never waits on the network."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_uri: str | None = None,
        leeway: float = 30.0,
        cooldown: float = 30.0,
        stale_if_error: float = 86400.0,
        cache_size: int = 10000,
        introspect: bool = False,
        introspection_client: AsyncTokenClient | None = None,
        introspection_cache: float = 5.0,
        dpop_max_age: float = MAX_AGE,
        dpop_nonce_secret: bytes | None = None,
        dpop_replay: Any = None,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ):
        if introspect and introspection_client is None:
            raise ValueError("introspect=True needs introspection_client (an AsyncTokenClient to authenticate with)")
        self.issuer = issuer
        self.audience = audience
        nonces = Nonces(lambda: dpop_nonce_secret) if dpop_nonce_secret else None
        proofs = ProofCheck(max_age=dpop_max_age, nonces=nonces)
        self.policy = Verification(issuer, audience, leeway, cooldown, stale_if_error, cache_size, proofs=proofs)
        self.dpop_replay = proof_replay(dpop_replay, clock)
        self.http = http or httpx.AsyncClient(timeout=timeout)
        self.clock = clock
        self.introspect = introspect
        self.introspection_client = introspection_client
        self.introspection_cache = introspection_cache
        self._jwks_uri = jwks_uri
        self._locks = _LoopLocks()
        self.fetch_count = 0

    def __repr__(self) -> str:
        return f"AsyncTokenVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    @tracing.traced("verify token")
    async def verify(
        self,
        token: str,
        scopes: Iterable[str] | None = None,
        *,
        actor: str | None = None,
        no_actor: bool | str | Iterable[str] = False,
        scheme: str | None = None,
        dpop_proof: str | None = None,
        method: str | None = None,
        url: str | None = None,
        client_cert: Any = None,
    ) -> dict[str, Any]:
        """The token's claims, or an InvalidToken subclass saying why it is refused; `actor` / `no_actor`, the
        DPoP arguments (`scheme`, `dpop_proof`, `method`, `url`) and `client_cert` as `TokenVerifier.verify`."""
        policy, now = self.policy, self.clock()
        claims = policy.cached(token, now)
        if claims is None:
            jws = policy.parse(token)
            kid = jws.kid
            lock = self._locks.get("jwks")
            if policy.jwks.needs_refresh(now) and (policy.must_wait_for_keys(now) or not lock.locked()):
                async with lock:
                    if policy.jwks.needs_refresh(now):
                        await self._fetch(now)
            if policy.needs_fetch_for(kid, now):
                async with lock:
                    if policy.needs_fetch_for(kid, now):
                        policy.jwks.forced(now)
                        await self._fetch(now)
                        policy.fetched_for(kid, now)
            claims = policy.complete(token, jws, now)
        proof = policy.binding(claims, token, scheme, dpop_proof, method, url, now)
        if proof is not None:
            await self._first_use(proof)
        if self.introspect:
            await self._check_active(token, claims, now)
        return policy.result(claims, scopes, actor, no_actor, client_cert=client_cert)

    async def _first_use(self, proof: DPoPProof) -> None:
        """RFC 9449 §11.1: a proof is accepted once; a shared (Redis) cache is asked off the event loop."""
        replay, args = self.dpop_replay, (*replay_key(proof), self.policy.proofs.replay_until(proof))
        first = replay.first_use(*args) if isinstance(replay, MemoryProofReplay) else await asyncio.to_thread(replay.first_use, *args)
        if not first:
            raise InvalidDPoPProof("DPoP proof was already used")

    async def _jwks_url(self) -> str:
        if self._jwks_uri is None:
            self._jwks_uri = (await discover_async(self.http, self.issuer))["jwks_uri"]
        return self._jwks_uri

    @tracing.traced("fetch JWKS", kind="client")
    async def _fetch(self, now: float) -> None:
        self.fetch_count += 1
        try:
            response = await self.http.get(await self._jwks_url(), headers=tracing.inject())
            response.raise_for_status()
            self.policy.accept_keys(response.json(), response.headers.get("Cache-Control"), now)
        except (httpx.HTTPError, ValueError, DiscoveryError) as exc:
            self.policy.jwks.failed(now)
            log.warning("JWKS fetch failed, keeping %d cached keys: %s", len(self.policy.jwks.keys), network_failure(exc))

    async def _check_active(self, token: str, claims: dict[str, Any], now: float) -> None:
        if self.policy.known_active(claims["jti"], now):
            return
        client = self.introspection_client
        assert client is not None  # the constructor requires one with introspect=True
        endpoint = (await client.metadata())["introspection_endpoint"]
        fields, basic = await client.client_auth(endpoint)
        try:
            response = await self.http.post(endpoint, data={"token": token, **fields}, **_basic_auth(basic), headers=tracing.inject())
            response.raise_for_status()
            active = response.json().get("active") is True
        except (httpx.HTTPError, ValueError, AttributeError):
            raise KeySetUnavailable("the issuer's introspection endpoint did not answer") from None
        if not active:
            raise RevokedToken("token is no longer active")
        self.policy.remember_active(claims["jti"], now + self.introspection_cache)
