"""httpx authentication: `HttpxTokenAuth` attaches a TokenDealer token to httpx requests, sync or async.

Needs the `httpx` extra.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx

from . import tracing
from .aio import AsyncTokenClient
from .client import TokenClient
from .core.dpop import asks_for_nonce, presentation
from .core.origins import PinnedAuth


def _refused_token(response: httpx.Response) -> bool:
    """A 401 whose challenge says the token itself is bad (RFC 6750 §3.1), not merely missing."""
    return response.status_code == 401 and "invalid_token" in response.headers.get("WWW-Authenticate", "")


def _replayable(request: httpx.Request) -> bool:
    """A request whose body is already in memory can be sent a second time."""
    try:
        request.content  # noqa: B018 (raises for a streaming body that was not read)
    except httpx.RequestNotRead:
        return False
    return True


class HttpxTokenAuth(PinnedAuth[TokenClient | AsyncTokenClient], httpx.Auth):
    """Sends `Authorization: Bearer` to one origin only, so a token never reaches a party it was not
    obtained for: `origin` (any URL of it), or else the origin of the first request it authenticates;
    requests to any other origin get no token from it. On a 401 `invalid_token` from its origin, drops
    that token and retries once with a new one when the body can be sent again. With a DPoP client each
    request carries `Authorization: DPoP` and a fresh proof, and a 401 `use_dpop_nonce` is retried once with
    the nonce (RFC 9449 §7.1, §9). Give a TokenClient for httpx.Client, an AsyncTokenClient for httpx.AsyncClient.

    httpx itself takes Authorization off a redirect to another origin, except from http://host to
    https://host, which an httpx.Auth never sees: give it https:// URLs."""

    def _token(self, client: TokenClient) -> str:
        if self.subject_token is not None:
            return client.exchange(self.subject_token, self.audience, self.scope)
        return client.get_token(self.audience, self.scope)

    async def _atoken(self, client: AsyncTokenClient) -> str:
        if self.subject_token is not None:
            return await client.exchange(self.subject_token, self.audience, self.scope)
        return await client.get_token(self.audience, self.scope)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not isinstance(self.client, TokenClient):
            raise TypeError("HttpxTokenAuth with httpx.Client needs a TokenClient")
        if not self.pin.admits(str(request.url)):
            yield request
            return
        token = self._token(self.client)
        response = yield self._with(request, token)
        if self._new_nonce(request, response):
            yield self._with(request, token)
        elif self._retry_wanted(request, response):
            self.client.invalidate(token)
            yield self._with(request, self._token(self.client))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not isinstance(self.client, AsyncTokenClient):
            raise TypeError("HttpxTokenAuth with httpx.AsyncClient needs an AsyncTokenClient")
        if not self.pin.admits(str(request.url)):
            yield request
            return
        token = await self._atoken(self.client)
        response = yield self._with(request, token)
        if self._new_nonce(request, response):
            yield self._with(request, token)
        elif self._retry_wanted(request, response):
            self.client.invalidate(token)
            yield self._with(request, await self._atoken(self.client))

    def _retry_wanted(self, request: httpx.Request, response: httpx.Response) -> bool:
        """Whether our origin (not one a redirect led to) refused the token and the request can go again."""
        return _refused_token(response) and self.pin.admits(str(response.request.url)) and _replayable(request)

    def _new_nonce(self, request: httpx.Request, response: httpx.Response) -> bool:
        """RFC 9449 §9: our origin asks for a DPoP nonce it had not given before, and the request can go again."""
        dpop = self.client.dpop
        return (
            dpop is not None
            and asks_for_nonce(response.status_code, response.headers.get("WWW-Authenticate"))
            and self.pin.admits(str(response.request.url))
            and _replayable(request)
            and dpop.remember_nonce(str(request.url), response.headers.get("DPoP-Nonce"))
        )

    def _with(self, request: httpx.Request, token: str) -> Any:
        """The request with the token (and, for DPoP, a new proof for it: never a reused one)."""
        request.headers.update(presentation(token, self.client.dpop, request.method, str(request.url)))
        tracing.inject(request.headers)
        return request
