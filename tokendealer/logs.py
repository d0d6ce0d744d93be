"""Process logging: plain or JSON lines, each carrying the request id of the request it belongs to; and the
access log, one escaped line per request."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import g, has_request_context

from . import tracing

# Anything but printable ASCII, and the space, quote and backslash that delimit or escape a field.
_UNSAFE = re.compile(r"[^!#-\[\]-~]")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (from the X-Request-ID of the current request, or "-") to every record, and
    `trace_id` (the current trace's, or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        record.trace_id = tracing.trace_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if getattr(record, "trace_id", None):
            line["trace_id"] = record.trace_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(json_lines: bool, level: int = logging.INFO) -> None:
    """Log the `tokendealer` and `client_lib` loggers to stderr, as JSON lines when asked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    for name in ("tokendealer", "client_lib"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def _hex(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` as one unambiguous log field: control characters, non-printables, spaces, quotes and
    backslashes written as `\\xNN`, so a client cannot forge a line or send terminal escape sequences."""
    return _UNSAFE.sub(_hex, text)


class AccessLog:
    """WSGI middleware writing one access line per request to the file descriptor `fd`:
    `ADDRESS "METHOD PATH PROTOCOL" STATUS DURATIONms`.

    Every field is escaped; the path goes without its query string, so a misplaced credential never
    reaches the log. The address is the peer's, read before ProxyFix rewrites it. Each line is one
    `write(2)`, so lines from several workers sharing the descriptor never interleave.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], fd: int):
        self.app = app
        self.fd = fd

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        address = environ.get("REMOTE_ADDR", "-")
        statuses: list[str] = []

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, recording_start_response)
        finally:
            # Without a status the app raised, and the server answers 500.
            self._write(address, environ, statuses[-1][:3] if statuses else "500", started)

    def _write(self, address: str, environ: dict[str, Any], status: str, started: float) -> None:
        request = " ".join(escape(environ.get(name, "-")) for name in ("REQUEST_METHOD", "PATH_INFO", "SERVER_PROTOCOL"))
        line = f'{escape(address)} "{request}" {status} {(time.perf_counter() - started) * 1000:.3f}ms\n'
        try:
            os.write(self.fd, line.encode("ascii"))
        except OSError:
            pass  # a closed or full log destination must not fail the request
