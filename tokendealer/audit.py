"""The audit log: one JSON line per security-relevant event, never a secret, assertion or token."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import tracing
from .jsontext import compact

log = logging.getLogger(__name__)

# Fields that could carry credentials are never written, whatever a caller passes.
_FORBIDDEN = frozenset({"client_secret", "secret", "client_assertion", "assertion", "token", "access_token"})
_FORBIDDEN |= {"subject_token", "actor_token"}  # RFC 8693
_encode = compact(ensure_ascii=True, default=str)


class AuditLog:
    """Appends events to a file (0600) or writes them to stderr.

    Each write() is of whole lines on an O_APPEND descriptor, so the lines of several worker processes
    sharing the file never interleave. A failed write (a full disk) never fails the request that
    emitted the event: the lines wait in memory, up to `max_pending`, and go out with the next write
    that succeeds; past that bound the oldest are dropped and an `audit.lines_dropped` event says how many.

    With `buffered` (the workers of `tokendealer serve`) events are written in batches: once
    `BATCH_BYTES` are pending, at least every `FLUSH_INTERVAL` seconds (a daemon thread), and on
    `flush()`/`close()` and at exit. A SIGKILL loses at most the last second of lines (SECURITY.md).
    """

    BATCH_BYTES = 65536
    FLUSH_INTERVAL = 0.5

    def __init__(
        self, target: str | None = None, clock: Callable[[], float] = time.time, max_pending: int = 10_000, buffered: bool = False
    ):
        self.clock = clock
        self.max_pending = max_pending
        self._own = target is not None
        self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if target else 2
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._dropped = 0
        self._failing = False
        self._lock = threading.Lock()
        self._buffered = buffered
        self._second = (-1, "")
        if buffered:
            self._stop = threading.Event()
            threading.Thread(target=self._run, name="audit-flush", daemon=True).start()
            atexit.register(self.flush)

    def emit(self, event: str, **fields: Any) -> None:
        """Log `event` with its non-empty fields."""
        record = {"time": self._stamp(), "event": event}
        for name, value in fields.items():
            if value is not None and name not in _FORBIDDEN:
                record[name] = value
        trace_id = tracing.trace_id()
        if trace_id:
            record["trace_id"] = trace_id
        line = (_encode(record) + "\n").encode("utf-8")
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self._dropped += 1
            self._pending.append(line)
            self._pending_bytes += len(line)
            if not self._buffered or self._pending_bytes >= self.BATCH_BYTES:
                self._write_pending()

    def _stamp(self) -> str:
        """The current second as RFC 3339 UTC, formatted once per second."""
        second = int(self.clock())
        cached_second, text = self._second
        if second != cached_second:
            text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
            self._second = (second, text)  # one assignment: other threads see the old pair or the new one
        return text

    def flush(self) -> None:
        """Write out what is pending now."""
        with self._lock:
            if self._pending and self._fd >= 0:
                self._write_pending()

    def _run(self) -> None:
        while not self._stop.wait(self.FLUSH_INTERVAL):
            self.flush()

    @property
    def pending(self) -> int:
        """Lines waiting for the log to take writes again."""
        return len(self._pending)

    def _write_pending(self) -> None:
        if self._dropped and len(self._pending) < self.max_pending:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
            notice = {"time": stamp, "event": "audit.lines_dropped", "outcome": "lost", "count": self._dropped}
            self._pending.appendleft((_encode(notice) + "\n").encode("utf-8"))
            self._dropped = 0
        if self._buffered and len(self._pending) > 1:
            batch = b"".join(self._pending)  # one write for the batch: whole lines, atomic on O_APPEND
            self._pending.clear()
            self._pending.append(batch)
        self._pending_bytes = 0
        try:
            while self._pending:
                data = self._pending[0]
                written = os.write(self._fd, data)
                if written < len(data):
                    self._pending[0] = data[written:]  # the rest of the line goes next, in the same place
                    continue
                self._pending.popleft()
        except OSError as exc:
            if not self._failing:
                log.error("audit log write failed (%s); keeping lines in memory until it works again", exc.strerror)
            self._failing = True
            return
        self._failing = False

    def close(self) -> None:
        if self._buffered:
            self._stop.set()
            self.flush()
        if self._own and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
