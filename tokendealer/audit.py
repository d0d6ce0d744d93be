"""The audit log: one JSON line per security-relevant event, never a secret, assertion or token."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

# Fields that could carry credentials are never written, whatever a caller passes.
_FORBIDDEN = frozenset({"client_secret", "secret", "client_assertion", "assertion", "token", "access_token"})


class AuditLog:
    """Writes events to a file (appending) or to stderr."""

    def __init__(self, target: str | None = None, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.logger = logging.getLogger(f"tokendealer.audit.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        handler = logging.FileHandler(target, encoding="utf-8") if target else logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.logger.addHandler(handler)

    def emit(self, event: str, **fields: Any) -> None:
        """Log `event` with its non-empty fields."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())), "event": event}
        record.update({k: v for k, v in fields.items() if v is not None and k not in _FORBIDDEN})
        self.logger.info(json.dumps(record, separators=(",", ":"), default=str))

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
