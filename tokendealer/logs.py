"""Process logging: plain or JSON lines, each carrying the request id of the request it belongs to; and the
access log, one escaped line per request."""

from __future__ import annotations

import atexit
import fcntl
import functools
import json
import logging
import os
import re
import select
import stat
import sys
import threading
import time
from collections import deque

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
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            line["trace_id"] = trace_id
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


@functools.lru_cache(maxsize=1024)
def _escaped(text: str) -> str:
    """escape(), remembered: most lines repeat a few addresses."""
    return escape(text)


@functools.lru_cache(maxsize=256)
def _request_line(method: str, path: str, protocol: str) -> str:
    """The escaped request line, remembered: most lines repeat a few."""
    return f"{escape(method)} {escape(path)} {escape(protocol)}"


class LineBuffer:
    """Lines appended to a file descriptor in batches: written once `max_bytes` are pending, at most
    `interval` seconds after they were appended (a daemon thread), and on `flush()` (called on shutdown and
    at exit). Appending takes no lock and makes no system call.

    A batch goes out in writes of whole lines, each at most PIPE_BUF bytes unless the descriptor is a
    regular file opened O_APPEND (where one write is atomic whatever its size), so the lines of several
    workers sharing the descriptor never interleave. A SIGKILL loses what is pending: at most the last
    `interval` seconds.
    """

    def __init__(self, fd: int, max_bytes: int = 65536, interval: float = 0.5):
        self.fd = fd
        self.max_bytes = max_bytes
        self.interval = interval
        self._pending: deque[bytes] = deque()
        self._size = 0  # approximate (updated without a lock); it only decides when to flush early
        self._lock = threading.Lock()
        mode = os.fstat(fd).st_mode
        self._chunk = sys.maxsize if stat.S_ISREG(mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND else select.PIPE_BUF
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="log-flush", daemon=True).start()
        atexit.register(self.flush)

    def append(self, line: bytes) -> None:
        """Queue one line (with its newline)."""
        self._pending.append(line)
        self._size += len(line)
        if self._size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Write out every pending line now."""
        with self._lock:
            count = len(self._pending)
            if not count:
                return
            self._size = 0
            popleft = self._pending.popleft
            lines = [popleft() for _ in range(count)]
            batch: list[bytes] = []
            size = 0
            for line in lines:
                if batch and size + len(line) > self._chunk:
                    self._write(b"".join(batch))
                    batch, size = [], 0
                batch.append(line)
                size += len(line)
            self._write(b"".join(batch))

    def close(self) -> None:
        """Flush and stop the timer thread (the descriptor stays open: it is the caller's)."""
        self._stop.set()
        self.flush()

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # a closed or full log destination must not fail requests

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()


class AccessLog:
    """One access line per request: `ADDRESS "METHOD PATH PROTOCOL" STATUS DURATIONms`.

    Every field is escaped; the path goes without its query string, so a misplaced credential never
    reaches the log. The address is the peer's (as connected, not as a proxy claims). Lines are buffered
    (`LineBuffer`), so they reach the descriptor within a second, not one `write(2)` each.
    """

    def __init__(self, out: LineBuffer):
        self.out = out

    def record(self, address: str, method: str, path: str, protocol: str, status: int, started: float) -> None:
        """Log one request that began at `started` (time.perf_counter())."""
        if len(method) + len(path) <= 256:
            request = _request_line(method, path, protocol)
        else:  # a long path (URIs up to 64 KB) is escaped each time: remembering 256 of them could hold ~30 MB
            request = f"{escape(method)} {escape(path)} {escape(protocol)}"
        line = f'{_escaped(address)} "{request}" {status} {(time.perf_counter() - started) * 1000:.3f}ms\n'
        self.out.append(line.encode("ascii"))

    def flush(self) -> None:
        self.out.flush()
