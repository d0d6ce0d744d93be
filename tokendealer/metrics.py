"""Prometheus metrics; under `tokendealer serve` (PROMETHEUS_MULTIPROC_DIR set) every worker's values are summed."""

from __future__ import annotations

import bisect
import hmac
import ipaddress
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString
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

    def collect(self) -> Iterable[Metric]:
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

    def collect(self) -> Iterable[Metric]:
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


class Tally:
    """This worker's request counters: each thread adds into its own dict (no lock, no file write per
    request); `snapshot()` sums the threads' dicts. With a metrics directory, a daemon thread writes the
    snapshot to this worker's file at least once a second (and `flush()` on shutdown), and a scrape adds
    every other worker's file to its own live values, so any worker answers for the instance.
    A dead worker's file stays, as prometheus_client's multiprocess files do: counters never go down."""

    def __init__(self, directory: str | None, interval: float = 0.5):
        self.directory = directory
        self._local = threading.local()
        self._threads: list[dict[tuple, Any]] = []
        self._path = os.path.join(directory, f"tally-{os.getpid()}.json") if directory else None
        if directory:
            self._stop = threading.Event()
            self._interval = interval
            threading.Thread(target=self._run, name="metrics-flush", daemon=True).start()

    def values(self) -> dict[tuple, Any]:
        """The calling thread's own dict of (series, labels) -> count or [bucket counts..., sum]."""
        try:
            return self._local.values
        except AttributeError:
            values: dict[tuple, Any] = {}
            self._local.values = values
            self._threads.append(values)
            return values

    def snapshot(self) -> dict[tuple, Any]:
        """This process's values, summed over its threads."""
        return _sum_into({}, (thread.copy() for thread in list(self._threads)))

    def instance(self) -> dict[tuple, Any]:
        """Every worker's values summed: this one's live, the others' from their files."""
        total = self.snapshot()
        if self.directory:
            for name in os.listdir(self.directory):
                path = os.path.join(self.directory, name)
                if name.startswith("tally-") and name.endswith(".json") and path != self._path:
                    try:
                        with open(path) as file:
                            rows = json.load(file)
                    except (OSError, ValueError):
                        continue  # a worker's file being replaced: its previous values are gone with it for now
                    _sum_into(total, [{tuple(tuple(k) if isinstance(k, list) else k for k in key): value for key, value in rows}])
        return total

    def flush(self) -> None:
        """Write this worker's snapshot to its file (atomically: write, then rename)."""
        if not self._path:
            return
        rows = [[list(key), value] for key, value in self.snapshot().items()]
        temporary = f"{self._path}.{threading.get_ident()}.tmp"
        with open(temporary, "w") as file:
            json.dump(rows, file)
        os.replace(temporary, self._path)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except OSError:
                pass  # the directory is gone: the server is stopping


def _sum_into(total: dict[tuple, Any], parts: Iterable[dict[tuple, Any]]) -> dict[tuple, Any]:
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                mine = total.setdefault(key, [0] * len(value))
                for i, v in enumerate(value):
                    mine[i] += v
            else:
                total[key] = total.get(key, 0) + value
    return total


class TallyCounter:
    """A labelled counter kept in a `Tally`, with prometheus_client's `labels(...).inc()` interface."""

    def __init__(self, tally: Tally, name: str, documentation: str, labelnames: Sequence[str]):
        self.tally, self.name, self.documentation, self.labelnames = tally, name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], _CounterChild] = {}

    def labels(self, *values: str) -> _CounterChild:
        child = self._children.get(values)
        if child is None:
            child = self._children.setdefault(values, _CounterChild(self.tally, (self.name, tuple(map(str, values)))))
            self.tally.values().setdefault(child.key, 0)  # the series exists from its first use, at 0
        return child

    def family(self, values: dict[tuple, Any]) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for (name, labels), value in values.items():
            if name == self.name:
                family.add_metric(list(labels), value)
        return family


class _CounterChild:
    __slots__ = ("tally", "key")

    def __init__(self, tally: Tally, key: tuple):
        self.tally, self.key = tally, key

    def inc(self, amount: float = 1) -> None:
        values = self.tally.values()
        values[self.key] = values.get(self.key, 0) + amount


class TallyHistogram:
    """A labelled histogram kept in a `Tally`, with prometheus_client's `labels(...).observe(v)` interface."""

    def __init__(self, tally: Tally, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]):
        self.tally, self.name, self.documentation, self.labelnames = tally, name, documentation, tuple(labelnames)
        self.buckets = tuple(buckets)
        self._children: dict[tuple[str, ...], _HistogramChild] = {}

    def labels(self, *values: str) -> _HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children.setdefault(values, _HistogramChild(self, (self.name, tuple(map(str, values)))))
            self.tally.values().setdefault(child.key, [0] * child.size)
        return child

    def family(self, values: dict[tuple, Any]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for (name, labels), counts in values.items():
            if name == self.name:
                cumulative = list(itertools.accumulate(counts[:-1]))
                family.add_metric(list(labels), list(zip(bounds, cumulative, strict=True)), counts[-1])
        return family


class _HistogramChild:
    __slots__ = ("tally", "key", "buckets", "size")

    def __init__(self, histogram: TallyHistogram, key: tuple):
        self.tally, self.key, self.buckets = histogram.tally, key, histogram.buckets
        self.size = len(self.buckets) + 2  # one count per bucket, +Inf, then the sum

    def observe(self, amount: float) -> None:
        values = self.tally.values()
        counts = values.get(self.key)
        if counts is None:
            counts = values[self.key] = [0] * self.size
        counts[bisect.bisect_left(self.buckets, amount)] += 1
        counts[-1] += amount


class Metrics:
    """The series the server records. The per-request ones are `Tally` counters (summed over workers at
    scrape time); any other series may be a prometheus_client metric on `registry` (multiprocess mode under
    `tokendealer serve`)."""

    def __init__(self, keys: KeyringSource, clock: Callable[[], float] = time.time, engine: Any = None):
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = CollectorRegistry()
        self.tally = Tally(self.multiprocess_dir)
        self.tokens_issued = TallyCounter(self.tally, "tokendealer_tokens_issued", "Access tokens issued", ["client_id"])
        self.tokens_refused = TallyCounter(self.tally, "tokendealer_tokens_refused", "Token requests refused", ["client_id", "error"])
        # Workload identity federation: which trusted issuer and rule admitted each token (bounded: both are registered).
        self.federated_tokens = TallyCounter(
            self.tally,
            "tokendealer_federated_tokens_issued",
            "Access tokens issued on a federated workload token",
            ["client_id", "issuer", "rule_id"],
        )
        self.dpop_tokens = TallyCounter(
            self.tally, "tokendealer_dpop_tokens_issued", "DPoP-bound access tokens issued (RFC 9449)", ["client_id"]
        )
        self.certificate_bound_tokens = TallyCounter(
            self.tally, "tokendealer_certificate_bound_tokens_issued", "Certificate-bound access tokens issued (RFC 8705)", ["client_id"]
        )
        self.rate_limited = TallyCounter(self.tally, "tokendealer_rate_limit_refusals", "Requests refused with 429", ["endpoint"])
        self.latency = TallyHistogram(
            self.tally,
            "tokendealer_request_duration_seconds",
            "Request latency per endpoint",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.registry.register(DATABASE_ERRORS)
        self.keyring = KeyringCollector(keys, clock)
        self.registry.register(self.keyring)
        self.readiness = ReadinessCollector(keys, engine) if engine is not None else None
        if self.readiness:
            self.registry.register(self.readiness)
        self.tallied = _TallyCollector(
            self.tally,
            (
                self.rate_limited,
                self.tokens_refused,
                self.latency,
                self.tokens_issued,
                self.federated_tokens,
                self.dpop_tokens,
                self.certificate_bound_tokens,
            ),
        )
        self.registry.register(self.tallied)

    def flush(self) -> None:
        """Shutdown: publish this worker's last counts."""
        self.tally.flush()

    def render(self) -> bytes:
        """The exposition text: summed over workers in multiprocess mode, plus this process's keyring view."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self.keyring)
            if self.readiness:
                registry.register(self.readiness)
            registry.register(self.tallied)
            return generate_latest(registry)
        return generate_latest(self.registry)


class _TallyCollector:
    """The `Tally` series, summed over the instance's workers when scraped."""

    def __init__(self, tally: Tally, series: Sequence[TallyCounter | TallyHistogram]):
        self.tally = tally
        self.series = series

    def collect(self) -> Iterable[Metric]:
        values = self.tally.instance()
        return [series.family(values) for series in self.series]


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
