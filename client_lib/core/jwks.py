"""What a verifier knows of the issuer's keys (its JWK Set) and when it may ask for them again."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..jose import VerificationKey, verification_keys

_MAX_AGE_RE = re.compile(r"(?:^|,)\s*(s-)?max-age\s*=\s*\"?(\d+)", re.I)


def cache_lifetime(cache_control: str | None, default: float, low: float, high: float) -> float:
    """Seconds to keep a JWKS: its Cache-Control max-age clamped to [low, high], or `default`."""
    match = _MAX_AGE_RE.search(cache_control or "")
    if not match:
        return default
    return min(high, max(low, float(match.group(2))))


@dataclass
class JwksState:
    """What a verifier knows of the issuer's keys and when it may ask again.

    Keys are replaced only by a successful fetch; a failed one keeps them (stale-if-error, bounded).
    An unknown kid may trigger a refetch at most once per `cooldown`; kids still unknown after one are
    remembered for the cooldown, so a flood of random kids costs at most one fetch per cooldown.
    """

    cooldown: float = 30.0
    default_lifetime: float = 600.0
    min_lifetime: float = 60.0
    max_lifetime: float = 3600.0
    stale_if_error: float = 86400.0
    keys: dict[str, VerificationKey] = field(default_factory=dict)
    fetched_at: float | None = None
    expires_at: float = 0.0
    last_forced: float = float("-inf")
    last_failure: float = float("-inf")
    unknown: dict[str, float] = field(default_factory=dict)

    def needs_refresh(self, now: float) -> bool:
        """True once the cached set is past 80% of its lifetime (refresh ahead) or there is none."""
        if self.fetched_at is None:
            return now - self.last_failure >= min(self.cooldown, 5.0)
        ahead = self.fetched_at + 0.8 * (self.expires_at - self.fetched_at)
        return now >= ahead and now - self.last_failure >= min(self.cooldown, 5.0)

    def usable(self, now: float) -> bool:
        """Whether the cached keys may still be used (fresh, or stale within the stale-if-error bound)."""
        return self.fetched_at is not None and now < self.expires_at + self.stale_if_error

    def may_fetch_for(self, kid: str, now: float) -> bool:
        """Whether an unknown kid may cause a refetch now."""
        if self.unknown.get(kid, float("-inf")) > now:
            return False
        return now - self.last_forced >= self.cooldown

    def accepted(self, jwks: Any, cache_control: str | None, now: float) -> None:
        """Take the keys of a fetched JWK Set (ValueError if it is not one)."""
        keys = verification_keys(jwks)
        self.keys = keys
        self.fetched_at = now
        self.expires_at = now + cache_lifetime(cache_control, self.default_lifetime, self.min_lifetime, self.max_lifetime)
        self.unknown = {k: t for k, t in self.unknown.items() if t > now and k not in keys}

    def failed(self, now: float) -> None:
        self.last_failure = now

    def forced(self, now: float) -> None:
        self.last_forced = now

    def still_unknown(self, kid: str, now: float) -> None:
        if len(self.unknown) > 10000:
            self.unknown.clear()
        self.unknown[kid] = now + self.cooldown

    def lookup(self, kid: Any, now: float) -> VerificationKey | None:
        if not isinstance(kid, str) or not self.usable(now):
            return None
        return self.keys.get(kid)
