"""Prometheus metrics; under `tokendealer serve` (PROMETHEUS_MULTIPROC_DIR set) every worker's values are summed."""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.exc import SQLAlchemyError

from . import db
from .errors import BearerTokenRequired, Forbidden
from .keyring import KeyringSource

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Counted where any failure is mapped to an answer (http.as_oauth_error), which knows no app: one per process.
DATABASE_ERRORS = Counter("tokendealer_database_errors", "Requests answered 503 because the database failed", registry=None)


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
        failing = GaugeMetricFamily("tokendealer_keyring_error", "1 while the last keyring reload in this process failed")
        failing.add_metric([], 1.0 if self.keys.error else 0.0)
        return [since, age, failures, failing]


class ReadinessCollector:
    """tokendealer_ready: 1 when /readyz would answer 200 (the database answers, an active key is loaded and
    the keyring loads), computed when scraped."""

    def __init__(self, keys: KeyringSource, engine: Any):
        self.keys = keys
        self.engine = engine

    def collect(self):  # noqa: ANN201 (prometheus_client collector protocol)
        keyring = self.keys.current()
        ready = keyring is not None and keyring.active is not None and not self.keys.error
        if ready:
            try:
                db.ping(self.engine)
            except SQLAlchemyError:
                ready = False
        gauge = GaugeMetricFamily("tokendealer_ready", "1 when this process is ready to serve (as /readyz)")
        gauge.add_metric([], 1.0 if ready else 0.0)
        return [gauge]


class Metrics:
    """The series the server records."""

    def __init__(self, keys: KeyringSource, clock: Callable[[], float] = time.time, engine: Any = None):
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
        self.registry.register(DATABASE_ERRORS)
        self.keyring = KeyringCollector(keys, clock)
        self.registry.register(self.keyring)
        self.readiness = ReadinessCollector(keys, engine) if engine is not None else None
        if self.readiness:
            self.registry.register(self.readiness)

    def render(self) -> bytes:
        """The exposition text: summed over workers in multiprocess mode, plus this process's keyring view."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self.keyring)
            if self.readiness:
                registry.register(self.readiness)
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
