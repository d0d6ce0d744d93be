"""The token endpoint's own WSGI path.

`POST /oauth/token` is the hot path of the product, so it is served by a small WSGI handler in front of
Flask: the same `TokenEndpoint`, the same parser and the same error mapping as the Flask views, without
Flask's per-request machinery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from .endpoints import TokenEndpoint
from .errors import InvalidRequest, RequestTooLarge
from .http import NO_STORE, as_oauth_error, cgi_name, dumps, error_parts, parse_form, request_id
from .messages import TokenRequest
from .metrics import Metrics

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
        started = time.perf_counter()
        try:
            params = parse_form(environ.get("CONTENT_TYPE"), self._body(environ))
            result = self.endpoint.create_token_response(
                TokenRequest.parse(params, lambda name: environ.get(cgi_name(name)), environ.get("REMOTE_ADDR"))
            )
            status, headers, body = 200, NO_STORE, dumps(result).encode()
        except Exception as exc:  # every failure becomes a JSON error answer
            error = as_oauth_error(exc)
            status, headers, body = error_parts(error, "/oauth/token")
            if status == 429:
                self.rate_limited.inc()
        response_headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Request-ID", request_id(environ.get("HTTP_X_REQUEST_ID"))),
            *headers.items(),
        ]
        start_response(f"{status} {HTTPStatus(status).phrase}", response_headers)
        self.latency.observe(time.perf_counter() - started)
        return [body]

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
