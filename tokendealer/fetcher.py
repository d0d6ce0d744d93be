"""Outbound fetches of remote JWK Sets (a client's `jwks_uri`; external issuers), under these rules:
an overall deadline, a size limit, no redirects, a cached failure with back-off, and refreshes off the
request path, so a slow or hostile remote never holds a token request for long nor costs more than one
fetch per back-off period."""

from __future__ import annotations

import contextvars
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from client_lib.core.failures import network_failure

from . import tracing

log = logging.getLogger(__name__)

USER_AGENT = "tokendealer"
MAX_BYTES = 65536


class FetchError(Exception):
    """A remote document could not be fetched; the message says why, without echoing its content."""


@tracing.traced("GET", kind="client")
def get_json(url: str, deadline: float, max_bytes: int = MAX_BYTES) -> Any:
    """GET `url` and parse its JSON body, all within `deadline` seconds (not per socket operation), at
    most `max_bytes`, answering anything but a 200 (redirects included) with FetchError."""
    parts = urlsplit(url)
    tracing.annotate(method="GET", url=url, server_address=parts.hostname)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("not an http(s) URL")
    started = time.monotonic()
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = connection_class(parts.hostname, parts.port, timeout=deadline)
    done = threading.Event()
    threading.Thread(target=_abort_at, args=(conn, done, started + deadline), daemon=True).start()
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=tracing.inject(dict(_HEADERS)))
        response = conn.getresponse()
        tracing.annotate(status=response.status)
        if response.status != 200:
            raise FetchError(f"answered HTTP {response.status}")
        body = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FetchError(_late(started, deadline) or f"failed: {network_failure(exc)}") from None
    finally:
        done.set()
        conn.close()
    if len(body) > max_bytes:
        raise FetchError(f"is larger than {max_bytes} bytes")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        # A remote cut off at the deadline may have sent a status line and part of its headers, and nothing more.
        raise FetchError(_late(started, deadline) or "did not answer JSON") from None


_HEADERS = {"Accept": "application/json", "User-Agent": USER_AGENT}


def _late(started: float, deadline: float) -> str | None:
    """What to say of a failed fetch when its deadline had passed (its socket was shut down then)."""
    return f"did not answer within {deadline:g} s" if time.monotonic() >= started + deadline else None


def _abort_at(conn: http.client.HTTPConnection, done: threading.Event, end: float) -> None:
    """Shut the connection's socket down at `end` unless the fetch is done: a blocked read returns at once."""
    while not done.wait(max(0.0, end - time.monotonic())):
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        end = time.monotonic() + 0.05  # still connecting (bounded by the connect timeout): look again shortly


@dataclass
class _Remote:
    """What is known of one URL: the last good value, until when it is fresh, and the back-off state."""

    value: Any = None
    fresh_until: float = float("-inf")
    failures: int = 0
    retry_at: float = float("-inf")
    last_forced: float = float("-inf")
    pending: Future | None = None
    slow: bool = False


class RemoteCache:
    """Remote JSON documents by URL, each checked by `validate`, cached for `ttl` seconds.

    - A fresh value is served from the cache. A stale one is still served while a refresh runs in the
      background; so is the last good value while the remote fails.
    - A request that has no value waits at most `wait` seconds for the fetch, which itself has `deadline`.
    - One fetch per URL at a time; after a failure none for a back-off that doubles from `backoff` up to
      `max_backoff`; `force` (an unknown key id) refetches at most once per `cooldown`.
    """

    def __init__(
        self,
        validate: Callable[[Any], Any],
        ttl: float = 300.0,
        deadline: float = 5.0,
        wait: float = 1.0,
        cooldown: float = 30.0,
        backoff: float = 5.0,
        max_backoff: float = 300.0,
        max_bytes: int = MAX_BYTES,
        max_urls: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.validate = validate
        self.ttl = ttl
        self.deadline = deadline
        self.wait = wait
        self.cooldown = cooldown
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_bytes = max_bytes
        self.max_urls = max_urls
        self.monotonic = monotonic
        self._remotes: dict[str, _Remote] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokendealer-fetch")

    def get(self, url: str, force: bool = False) -> Any:
        """The document at `url` (validated), or FetchError when there is none to be had in time."""
        with self._lock:
            now = self.monotonic()
            remote = self._remote(url)
            if force and now - remote.last_forced < self.cooldown:
                force = False
            if remote.value is not None and now < remote.fresh_until and not force:
                return remote.value
            pending = self._start(url, remote, now, force)
            value = remote.value
        if value is not None and not force:
            return value  # stale but good: the refresh runs off the request path
        if pending is None or remote.slow:
            if value is not None:
                return value
            raise FetchError("failed recently; not retried yet" if pending is None else "did not answer in time")
        try:
            return pending.result(timeout=self.wait)
        except FutureTimeout:
            remote.slow = True  # one request has waited for this fetch; the next ones do not
        except FetchError:
            pass
        if value is not None:
            return value
        raise FetchError("did not answer in time")

    def _remote(self, url: str) -> _Remote:
        remote = self._remotes.get(url)
        if remote is None:
            if len(self._remotes) >= self.max_urls:
                self._remotes.clear()
            remote = self._remotes[url] = _Remote()
        return remote

    def _start(self, url: str, remote: _Remote, now: float, force: bool) -> Future | None:
        """The fetch in flight for `url`, starting one if none runs and the back-off allows."""
        if remote.pending is not None:
            return remote.pending
        if now < remote.retry_at:
            return None
        if force:
            remote.last_forced = now
        # In the context of the request that started it, so its span is that request's child.
        remote.pending = self._pool.submit(contextvars.copy_context().run, self._fetch, url, remote)
        return remote.pending

    def _fetch(self, url: str, remote: _Remote) -> Any:
        try:
            value = self.validate(get_json(url, self.deadline, self.max_bytes))
        except Exception as exc:  # anything a hostile remote can cause ends as a cached failure
            with self._lock:
                remote.failures += 1
                remote.retry_at = self.monotonic() + min(self.max_backoff, self.backoff * 2 ** (remote.failures - 1))
                remote.pending, remote.slow = None, False
            log.warning("fetch of %s failed: %s", url, exc if isinstance(exc, FetchError) else exc.__class__.__name__)
            raise FetchError(str(exc) if isinstance(exc, FetchError) else "is not usable") from None
        with self._lock:
            remote.value, remote.fresh_until = value, self.monotonic() + self.ttl
            remote.failures, remote.retry_at, remote.pending, remote.slow = 0, float("-inf"), None, False
        return value
