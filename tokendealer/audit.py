"""The audit log: one JSON line per security-relevant event, never a secret, assertion or token."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from .logs import LineBuffer

# Fields that could carry credentials are never written, whatever a caller passes.
_FORBIDDEN = frozenset({"client_secret", "secret", "client_assertion", "assertion", "token", "access_token"})
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


class AuditLog:
    """Appends events to a file (0600) or writes them to stderr.

    Each event is a single write() on an O_APPEND descriptor, so the lines of several worker
    processes sharing the file never interleave. With `buffered` (the workers of `tokendealer serve`)
    events go out in batches through a `LineBuffer`: within a second, and on `close()`.
    """

    def __init__(self, target: str | None = None, clock: Callable[[], float] = time.time, buffered: bool = False):
        self.clock = clock
        self._own = target is not None
        self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if target else 2
        self._buffer = LineBuffer(self._fd) if buffered else None

    def emit(self, event: str, **fields: Any) -> None:
        """Log `event` with its non-empty fields."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())), "event": event}
        for name, value in fields.items():
            if value is not None and name not in _FORBIDDEN:
                record[name] = value
        line = (_encode(record) + "\n").encode("utf-8")
        if self._buffer is not None:
            self._buffer.append(line)
        else:
            os.write(self._fd, line)

    def flush(self) -> None:
        """Write out buffered events now."""
        if self._buffer is not None:
            self._buffer.flush()

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        if self._own and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
