"""Request-rate limits per remote address on endpoints outside the OAuth ones (which use Flask-Limiter
when TOKENDEALER_RATELIMIT is set)."""

from __future__ import annotations

import time

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .errors import TemporarilyUnavailable, TooManyRequests


class AddressRateLimit:
    """At most `limit` requests per address to one endpoint (moving window, the `limits` library and storage
    the failed-authentication guard uses); past it, 429 with `Retry-After`."""

    def __init__(self, storage_uri: str, limit: str, endpoint: str):
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))
        self.limits = parse_many(limit)
        self.endpoint = endpoint

    def hit(self, address: str | None) -> None:
        """Count one request from `address`; raise TooManyRequests once it is over its rate."""
        key = address or "unknown"
        for limit in self.limits:
            try:
                if self.limiter.hit(limit, self.endpoint, key):
                    continue
                reset_at = self.limiter.get_window_stats(limit, self.endpoint, key).reset_time
            except Exception as exc:  # the storage backend's own errors (redis, network): fail closed
                raise TemporarilyUnavailable(
                    "the rate-limit storage is not available; retry shortly", headers={"Retry-After": "1"}
                ) from exc
            retry_after = max(1, int(reset_at - time.time()) + 1)
            raise TooManyRequests(
                f"too many {self.endpoint} requests from this address; retry later", headers={"Retry-After": str(retry_after)}
            )
