"""HTTP plumbing shared by every endpoint: form parsing, request ids, and turning failures into answers."""

from __future__ import annotations

import functools
import logging
import re
from urllib.parse import unquote

from sqlalchemy.exc import SQLAlchemyError

from . import identifiers, tracing
from .errors import InvalidRequest, OAuthError, ServerError, TemporarilyUnavailable
from .jsontext import dumps
from .keyring import KeyringError
from .messages import Params
from .metrics import DATABASE_ERRORS
from .tokens import NoSigningKey

log = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
MAX_PARAMS = 32
MAX_PARAM_LENGTH = 16384
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
OAUTH_PATHS = frozenset({"/oauth/token", "/oauth/introspect", "/oauth/revoke"})
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def parse_form(content_type: str | None, body: bytes) -> Params:
    """An `application/x-www-form-urlencoded` body as name -> values, bounded in count and length."""
    if (content_type or "").split(";", 1)[0].strip().lower() != FORM:
        raise InvalidRequest(f"the body must be {FORM}")
    text = body.decode("utf-8", "replace")
    pairs = text.split("&", MAX_PARAMS) if text else []
    if len(pairs) > MAX_PARAMS:
        raise InvalidRequest("too many parameters")
    params: dict[str, list[str]] = {}
    # urllib.parse.parse_qs(text, keep_blank_values=True), with the bounds, and unquoting only what is quoted.
    for pair in pairs:
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "+" in name or "%" in name:
            name = _unquoted(name)
        if "+" in value or "%" in value:
            value = _unquoted(value)
        if len(name) > 64 or len(value) > MAX_PARAM_LENGTH:
            raise InvalidRequest(f"parameter {name[:64]!r} is too long")
        if name in params:
            params[name].append(value)
        else:
            params[name] = [value]
    return params


def _unquoted(text: str) -> str:
    """A quoted form name or value unquoted; remembered only when short, so what is kept stays small."""
    return _unquote_plus(text) if len(text) <= 256 else unquote(text.replace("+", " "))


@functools.lru_cache(maxsize=512)
def _unquote_plus(text: str) -> str:
    """A short quoted form value (`client_assertion_type`, a quoted audience) unquoted, remembered: most repeat."""
    return unquote(text.replace("+", " "))


def request_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is a short safe token, else a fresh one."""
    return incoming if incoming and REQUEST_ID_RE.fullmatch(incoming) else identifiers.request_id()


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
    if isinstance(exc, KeyringError):
        log.error("keyring error: %s", exc)
        return TemporarilyUnavailable("the keyring is not available; retry shortly", headers={"Retry-After": "5"})
    log.error("unexpected error", exc_info=exc)
    return ServerError("internal error")


def error_parts(exc: OAuthError, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of an error answer (RFC 6749 §5.2)."""
    tracing.annotate_request(error=exc.error)
    headers = dict(exc.headers)
    if path in OAUTH_PATHS:
        headers.update(NO_STORE)
    return exc.status, headers, dumps(exc.body()).encode()


def cgi_name(header: str) -> str:
    """PEP 3333: `X-Foo` arrives as `HTTP_X_FOO`."""
    return "HTTP_" + header.upper().replace("-", "_")
