"""The edge of `tokendealer serve`: the one place that decides how a request is read and where it runs.

granian calls `Edge` through RSGI on each worker's event loop. Every request's body is read there, by
awaiting it, within `body_timeout` seconds and `max_body_bytes`; a body that is late gets 408 and a body
that is too large 413, and either way the connection closes. So a slow, stalled or oversized request costs
a coroutine and a socket, never a thread. Only a complete, bounded request reaches the WSGI application:
the token endpoint (CPU-bound, cached client lookups) and /healthz run at once on the loop, everything
else (Flask) in a small thread pool, so the admin and database-bound endpoints never delay the loop.

The token endpoint, when nothing else has to see it first (no request-rate limits, no tracing span), is
called directly with the request's headers, not through WSGI and Flask (`fastpath.DirectTokenPath`).

Body deadlines are kept by one reaper per worker, not a timer per request: it wakes every `REAP_INTERVAL`
seconds (every half deadline when the body deadline is shorter than two rounds) and cancels the reads whose
deadline falls before its next round, so a body gets between `body_timeout - round` and `body_timeout` seconds,
never less than half of `body_timeout`.

The access log is written here too, one escaped line per request (`logs.AccessLog`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from .errors import InvalidRequest, OAuthError, RequestTimeout, RequestTooLarge, ServerError
from .http import dumps
from .logs import AccessLog

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
TOKEN_PATH = ("POST", "/oauth/token")
# Served at once on the loop: CPU only (the token path's client and key lookups are cached), no waiting.
INLINE = frozenset({TOKEN_PATH, ("GET", "/healthz")})
# Flask views that wait on the database or a remote (introspection, admin, readiness) run here.
POOL_THREADS = 4
# Seconds between two rounds of the body-deadline reaper.
REAP_INTERVAL = 0.25
# The token endpoint called with the peer's address, the request's headers (`Edge.headers`) and its body.
TokenPath = Callable[[str, dict[str, str], bytes], tuple[int, list[tuple[str, str]], bytes]]


class Edge:
    """RSGI application: read each request whole and in time, then run `app` (WSGI) on it."""

    def __init__(
        self,
        app: WSGIApp,
        access_log: AccessLog,
        body_timeout: float,
        max_body: int,
        inline_token_path: bool = True,
        on_close: Callable[[], None] | None = None,
        token_path: TokenPath | None = None,
    ):
        self.app = app
        self.access_log = access_log
        self.body_timeout = body_timeout
        self.max_body = max_body
        # With TOKENDEALER_RATELIMIT the token path goes through Flask-Limiter, whose storage may be remote.
        self.inline = INLINE if inline_token_path else INLINE - {TOKEN_PATH}
        self.token_path = token_path if inline_token_path else None
        self.on_close = on_close
        # A round never longer than half the deadline: a read that began just before one keeps half its time.
        self.reap_interval = min(REAP_INTERVAL, body_timeout / 2)
        self.pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="flask")
        self.loop: asyncio.AbstractEventLoop | None = None
        # Requests whose body is being read, with their deadlines (loop time); the reaper's cancelled ones.
        self.reading: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.call_soon(self.reap)

    def reap(self) -> None:
        """Cancel the body reads whose deadline falls before the next round (408 in `read_body`); run again."""
        assert self.loop is not None
        now = self.loop.time()
        for task, deadline in list(self.reading.items()):
            if deadline <= now + self.reap_interval:
                del self.reading[task]
                self.expired.add(task)
                task.cancel()
        self.loop.call_later(self.reap_interval, self.reap)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Worker shutdown: let the pool finish what it holds, then write out the buffered logs."""
        self.pool.shutdown(wait=True)
        if self.on_close:
            self.on_close()
        self.access_log.flush()

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        started = time.perf_counter()
        if scope.proto != "http":
            return
        address = scope.client.rpartition(":")[0] or scope.client
        path = scope.path
        if "%" in path or not path.isascii():
            path = unquote_to_bytes(path).decode("latin-1")  # PEP 3333: the path's bytes as latin-1 text
        method = scope.method
        try:
            body = await self.read_body(scope, protocol)
            if self.token_path is not None and (method, path) == TOKEN_PATH:
                status, headers, payload = self.token_path(address, self.headers(scope), body)
            elif (method, path) in self.inline:
                status, headers, payload = self.call(self.environ(scope, path, address, body))
            else:
                environ = self.environ(scope, path, address, body)
                status, headers, payload = await asyncio.get_running_loop().run_in_executor(self.pool, self.call, environ)
        except OAuthError as exc:
            # A late or oversized body is not read further: the connection closes after this answer.
            status, payload = exc.status, dumps(exc.body()).encode()
            headers = [("content-type", "application/json"), ("connection", "close")]
        except Exception as exc:  # the application failed outside its own error handling
            log.error("unexpected error", exc_info=exc)
            status, headers, payload = 500, [("content-type", "application/json")], dumps(ServerError("internal error").body()).encode()
        protocol.response_bytes(status, headers, payload)
        self.access_log.record(address, method, path, _protocol(scope), status, started)

    async def read_body(self, scope: Any, protocol: Any) -> bytes:
        """The whole body, or RequestTooLarge (413) past `max_body` bytes, or RequestTimeout (408) when it
        has not all arrived within `body_timeout` seconds of the headers (as the reaper keeps them)."""
        headers = scope.headers
        length = headers.get("content-length")
        # HTTP/1.1 without either header has no body (RFC 9112 §6.3); an HTTP/2 body is framed, with or without a length.
        if length is None and "transfer-encoding" not in headers and scope.http_version != "2":
            return b""
        if length is not None:
            if not length.isdigit():
                raise InvalidRequest("bad Content-Length")
            if int(length) > self.max_body:
                raise RequestTooLarge(f"the body is larger than {self.max_body} bytes")
        task = asyncio.current_task()
        assert task is not None and self.loop is not None
        self.reading[task] = self.loop.time() + self.body_timeout
        try:
            if length is not None:
                return await protocol()
            chunks, size = [], 0
            async for chunk in protocol:
                size += len(chunk)
                if size > self.max_body:
                    raise RequestTooLarge(f"the body is larger than {self.max_body} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except asyncio.CancelledError:
            if task not in self.expired:
                raise  # cancelled by granian (the client went away, the worker stops), not by the reaper
            self.expired.discard(task)
            task.uncancel()
            raise RequestTimeout(f"the body did not arrive within {self.body_timeout:g} s") from None
        finally:
            self.reading.pop(task, None)

    @staticmethod
    def headers(scope: Any) -> dict[str, str]:
        """The request's headers by lower-case name, repeated ones joined by commas. A name with `_` is dropped:
        `X_SSL_Client_Cert` would become the same HTTP_X_SSL_CLIENT_CERT as the `X-SSL-Client-Cert` a trusted
        proxy sets, so (as nginx and gunicorn do) no client can smuggle a proxy's header through it."""
        headers: dict[str, str] = {}
        for name, value in scope.headers.items():
            if "_" in name:
                continue
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        return headers

    def environ(self, scope: Any, path: str, address: str, body: bytes) -> dict[str, Any]:
        """PEP 3333 environ of a request whose body is already in."""
        host, _, port = (scope.authority or scope.headers.get("host") or "localhost").partition(":")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": host,
            "SERVER_PORT": port or ("443" if scope.scheme == "https" else "80"),
            "SERVER_PROTOCOL": _protocol(scope),
            "REMOTE_ADDR": address,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in self.headers(scope).items():
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "content-length":
                environ["CONTENT_LENGTH"] = value
            else:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ

    def call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run the WSGI application on a complete request; its status, headers and whole body."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            started[:] = [status, headers]
            return _no_write

        result = self.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close:
                close()
        return int(started[0][:3]), started[1], payload


def _protocol(scope: Any) -> str:
    return f"HTTP/{scope.http_version}"


def _no_write(data: bytes) -> None:
    raise RuntimeError("the WSGI write() callable is not supported")
