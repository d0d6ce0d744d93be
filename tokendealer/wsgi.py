"""HTTP plumbing shared by every endpoint — form parsing, error mapping — and the token endpoint's WSGI path.

`POST /oauth/token` is the hot path of the product, so it is served by a small WSGI handler in front of
Flask: the same `TokenEndpoint`, the same parser and the same error mapping as the Flask views, without
Flask's per-request machinery.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy.exc import SQLAlchemyError

from .errors import InvalidRequest, OAuthError, RequestTooLarge, ServerError, TemporarilyUnavailable
from .messages import Params, TokenRequest
from .metrics import DATABASE_ERRORS
from .tokens import NoSigningKey

log = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
MAX_PARAMS = 32
MAX_PARAM_LENGTH = 16384
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
OAUTH_PATHS = frozenset({"/oauth/token", "/oauth/introspect", "/oauth/revoke"})
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def parse_form(content_type: str | None, body: bytes) -> Params:
    """An `application/x-www-form-urlencoded` body as name -> values, bounded in count and length."""
    if (content_type or "").split(";", 1)[0].strip().lower() != FORM:
        raise InvalidRequest(f"the body must be {FORM}")
    try:
        params = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_PARAMS)
    except ValueError:
        raise InvalidRequest("too many parameters") from None
    for name, values in params.items():
        if len(name) > 64 or any(len(v) > MAX_PARAM_LENGTH for v in values):
            raise InvalidRequest(f"parameter {name[:64]!r} is too long")
    return params


def request_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is a short safe token, else a fresh one."""
    return incoming if incoming and REQUEST_ID_RE.fullmatch(incoming) else secrets.token_hex(16)


def as_oauth_error(exc: Exception) -> OAuthError:
    """Every failure as the OAuthError to answer with: database and keyring outages are 503, never 500."""
    if isinstance(exc, OAuthError):
        return exc
    if isinstance(exc, SQLAlchemyError):
        log.error("database error: %s", exc.__class__.__name__)
        DATABASE_ERRORS.inc()
        return TemporarilyUnavailable("the database is not available; retry shortly", headers={"Retry-After": "1"})
    if isinstance(exc, NoSigningKey):
        return TemporarilyUnavailable("no signing key is loaded", headers={"Retry-After": "5"})
    log.error("unexpected error", exc_info=exc)
    return ServerError("internal error")


def error_parts(exc: OAuthError, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of an error answer (RFC 6749 §5.2)."""
    headers = dict(exc.headers)
    if path in OAUTH_PATHS:
        headers.update(NO_STORE)
    return exc.status, headers, dumps(exc.body()).encode()


class TokenFastPath:
    """WSGI middleware serving `POST /oauth/token` itself and passing everything else to Flask."""

    def __init__(self, app: Callable[..., Iterable[bytes]], services: Any):
        self.app = app
        self.endpoint = services.token_endpoint
        self.max_body = services.config.max_body_bytes
        self.latency = services.metrics.latency.labels("/oauth/token")
        self.rate_limited = services.metrics.rate_limited.labels("/oauth/token")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/oauth/token" or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        started = time.perf_counter()
        try:
            params = parse_form(environ.get("CONTENT_TYPE"), self._body(environ))
            result = self.endpoint.create_token_response(
                TokenRequest.parse(params, environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR"))
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
