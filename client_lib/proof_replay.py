"""Where a resource server remembers DPoP proofs it has accepted (RFC 9449 §11.1): in this process's memory,
or in Redis, shared by every instance of the service. Redis needs the `redis` package (`pip install redis`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .core.dpop import MemoryProofReplay
from .exceptions import ReplayCacheUnavailable


class ProofReplay(Protocol):
    def first_use(self, name: str, jti: str, expires_at: float) -> bool: ...


class RedisProofReplay:
    """Proof jtis in Redis (SET NX with an absolute expiry), shared by every instance; when Redis cannot be
    reached the proof is refused (503), never let through unchecked."""

    def __init__(self, redis: Any, prefix: str = "client_lib:dpop:"):
        import redis as redis_module  # noqa: PLC0415 (only when configured)

        self.redis = redis_module.Redis.from_url(redis, socket_timeout=2, socket_connect_timeout=2) if isinstance(redis, str) else redis
        self.errors = redis_module.RedisError
        self.prefix = prefix

    def first_use(self, name: str, jti: str, expires_at: float) -> bool:
        """Record the jti; False if any instance saw it before."""
        try:
            return bool(self.redis.set(f"{self.prefix}{name}:{jti}", b"1", nx=True, exat=int(expires_at) + 1))
        except self.errors:
            raise ReplayCacheUnavailable("the DPoP replay cache (Redis) did not answer") from None


def proof_replay(spec: Any, clock: Callable[[], float]) -> ProofReplay:
    """The replay cache `dpop_replay=` names: None for memory, a redis:// URL or a redis.Redis client, or any
    object with `first_use(name, jti, expires_at)`."""
    if spec is None:
        return MemoryProofReplay(clock)
    if isinstance(spec, str) or type(spec).__module__.startswith("redis"):
        return RedisProofReplay(spec)
    return spec
