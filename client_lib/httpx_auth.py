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
    that token and retries once with a new one when the body can be sent again. Give a TokenClient for
    httpx.Client, an AsyncTokenClient for httpx.AsyncClient.

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
        if self._retry_wanted(request, response):
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
        if self._retry_wanted(request, response):
            self.client.invalidate(token)
            yield self._with(request, await self._atoken(self.client))

    def _retry_wanted(self, request: httpx.Request, response: httpx.Response) -> bool:
        """Whether our origin (not one a redirect led to) refused the token and the request can go again."""
        return _refused_token(response) and self.pin.admits(str(response.request.url)) and _replayable(request)

    @staticmethod
    def _with(request: httpx.Request, token: str) -> Any:
        request.headers["Authorization"] = f"Bearer {token}"
        tracing.inject(request.headers)
        return request
