"""The token endpoint's own WSGI path.

`POST /oauth/token` is the hot path of the product, so it is served by a small handler in front of Flask:
the same `TokenEndpoint`, the same parser and the same error mapping as the Flask views, without Flask's
per-request machinery. `TokenFastPath.respond` is that handler; it is reached as WSGI middleware (Flask's
development server, the test client, and `serve` when a tracing span or request-rate limits must see the
request first) or, in `serve`, straight from the edge with the request's headers (`DirectTokenPath`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from .endpoints import TokenEndpoint
from .errors import InvalidRequest, RequestTooLarge
from .http import NO_STORE, as_oauth_error, cgi_name, dumps, error_parts, parse_form, request_id
from .messages import Header, TokenRequest
from .metrics import Metrics
from .mtls import ProxyHeaders

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class TokenFastPath:
    """WSGI middleware serving `POST /oauth/token` itself and passing everything else to Flask."""

    def __init__(self, app: WSGIApp, endpoint: TokenEndpoint, metrics: Metrics, max_body: int):
        self.app = app
        self.endpoint = endpoint
        self.max_body = max_body
        self.latency = metrics.latency.labels("/oauth/token")
        self.rate_limited = metrics.rate_limited.labels("/oauth/token")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/oauth/token" or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        status, headers, payload = self.respond(
            environ.get("CONTENT_TYPE"), lambda: self._body(environ), lambda name: environ.get(cgi_name(name)), environ.get("REMOTE_ADDR")
        )
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [payload]

    def respond(
        self, content_type: str | None, body: bytes | Callable[[], bytes], header: Header, address: str | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body of the answer to a token request; `body` is the request's, or reads it."""
        started = time.perf_counter()
        try:
            params = parse_form(content_type, body if isinstance(body, bytes) else body())
            result = self.endpoint.create_token_response(TokenRequest.parse(params, header, address))
            status, headers, payload = 200, NO_STORE, dumps(result).encode()
        except Exception as exc:  # every failure becomes a JSON error answer
            error = as_oauth_error(exc)
            status, headers, payload = error_parts(error, "/oauth/token")
            if status == 429:
                self.rate_limited.inc()
        response_headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("X-Request-ID", request_id(header("X-Request-ID"))),
            *headers.items(),
        ]
        self.latency.observe(time.perf_counter() - started)
        return status, response_headers, payload

    def _body(self, environ: dict[str, Any]) -> bytes:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise InvalidRequest("bad Content-Length") from None
        if length > self.max_body:
            raise RequestTooLarge(f"the body is larger than {self.max_body} bytes")
        stream = environ["wsgi.input"]
        body = stream.read(length) if length else stream.read(self.max_body + 1) if environ.get("wsgi.input_terminated") else b""
        if len(body) > self.max_body:
            raise RequestTooLarge(f"the body is larger than {self.max_body} bytes")
        return body


class DirectTokenPath:
    """The token endpoint as the edge calls it: a peer's address, the request's headers by lower-case name and
    its body in; status, headers and body out. The proxy headers are judged by the same `ProxyHeaders` that
    guards the WSGI application."""

    def __init__(self, proxy: ProxyHeaders, fast_path: TokenFastPath):
        self.proxy = proxy
        self.fast_path = fast_path

    def __call__(self, peer: str, headers: dict[str, str], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        address = self.proxy.resolve(peer, headers)
        return self.fast_path.respond(headers.get("content-type"), body, lambda name: headers.get(name.lower()), address)
