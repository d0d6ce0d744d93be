"""Prometheus metrics; under `tokendealer serve` (PROMETHEUS_MULTIPROC_DIR set) every worker's values are summed."""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from .errors import BearerTokenRequired, Forbidden
from .keyring import KeyringSource

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class KeyringCollector:
    """Key ages and reload failures, computed from this process's keyring when scraped."""

    def __init__(self, keys: KeyringSource, clock: Callable[[], float]):
        self.keys = keys
        self.clock = clock

    def collect(self):  # noqa: ANN201 (prometheus_client collector protocol)
        keyring = self.keys.current()
        now = self.clock()
        since = GaugeMetricFamily("tokendealer_seconds_since_last_rotation", "Seconds since the active key began signing")
        age = GaugeMetricFamily("tokendealer_active_key_age_seconds", "Seconds since the active key was created")
        failures = GaugeMetricFamily("tokendealer_keyring_reload_failures", "Keyring reloads that failed in this process")
        active = keyring.record("active") if keyring else None
        if active:
            since.add_metric([], now - (active.activated_at or active.created_at))
            age.add_metric([], now - active.created_at)
        failures.add_metric([], self.keys.reload_failures)
        return [since, age, failures]


class Metrics:
    """The series the server records."""

    def __init__(self, keys: KeyringSource, clock: Callable[[], float] = time.time):
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = CollectorRegistry()
        self.tokens_issued = Counter("tokendealer_tokens_issued", "Access tokens issued", ["client_id"], registry=self.registry)
        self.tokens_refused = Counter(
            "tokendealer_tokens_refused", "Token requests refused", ["client_id", "error"], registry=self.registry
        )
        # Workload identity federation: which trusted issuer and rule admitted each token (bounded: both are registered).
        self.federated_tokens = Counter(
            "tokendealer_federated_tokens_issued",
            "Access tokens issued on a federated workload token",
            ["client_id", "issuer", "rule_id"],
            registry=self.registry,
        )
        self.rate_limited = Counter("tokendealer_rate_limit_refusals", "Requests refused with 429", ["endpoint"], registry=self.registry)
        self.latency = Histogram(
            "tokendealer_request_duration_seconds",
            "Request latency per endpoint",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.keyring = KeyringCollector(keys, clock)
        self.registry.register(self.keyring)

    def render(self) -> bytes:
        """The exposition text: summed over workers in multiprocess mode, plus this process's keyring view."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self.keyring)
            return generate_latest(registry)
        return generate_latest(self.registry)


class ScrapeGuard:
    """Who may read /metrics (client ids are in the series): a peer address within `networks` and, when a
    token is set, `Authorization: Bearer TOKEN` (RFC 6750 §2.1), compared in constant time."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network], token: str | None):
        self.networks = tuple(networks)
        self.token = token.encode() if token else None

    def check(self, address: str | None, authorization: str | None) -> None:
        """Return if the scrape is allowed, else raise Forbidden (403) or BearerTokenRequired (401)."""
        if not self._allowed(address):
            raise Forbidden("metrics are not served to this address (TOKENDEALER_METRICS_ALLOW)")
        if self.token is None:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self.token):
            raise BearerTokenRequired(
                "the metrics bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="tokendealer-metrics"'}
            )

    def _allowed(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)
