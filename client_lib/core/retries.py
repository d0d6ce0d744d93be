"""When a token request is tried again: exponential backoff with jitter, Retry-After, a bounded budget."""

from __future__ import annotations

import random
from collections.abc import Iterable

from ..exceptions import TokenEndpointUnavailable


def backoff_delays(retries: int, base: float, cap: float, budget: float) -> Iterable[float]:
    """Exponential backoff with full jitter, stopping when the total budget is spent."""
    spent = 0.0
    for attempt in range(retries):
        delay = random.uniform(0, min(cap, base * 2**attempt))
        if spent + delay > budget:
            return
        spent += delay
        yield delay


def retry_after_seconds(value: str | None, default: float, cap: float) -> float:
    """A Retry-After header in seconds (delta form), bounded."""
    try:
        return min(cap, max(0.0, float(value))) if value else default
    except ValueError:
        return default


def retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth another try (429 and 5xx)."""
    return status == 429 or status >= 500


class RetrySchedule:
    """When to try a token request again: exponential backoff with jitter, honouring Retry-After,
    within a bounded count and total time. Raises TokenEndpointUnavailable once they are spent."""

    def __init__(self, endpoint: str, retries: int, base: float, budget: float):
        self.endpoint = endpoint
        self.budget = budget
        self._delays = iter(backoff_delays(retries, base, 5.0, budget))

    def next_wait(self, problem: str, retry_after: str | None = None) -> float:
        delay = next(self._delays, None)
        if delay is None:
            raise TokenEndpointUnavailable(f"token endpoint {self.endpoint} failed: {problem}")
        return max(delay, retry_after_seconds(retry_after, 0.0, self.budget))
