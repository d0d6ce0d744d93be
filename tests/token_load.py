"""Bounded token-request load on loopback, and the per-fault summary of what it saw.

Every loop is bounded twice: by a request count and by a deadline. Requests go to 127.0.0.x only; a source
address other than 127.0.0.1 stands for another machine.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote_plus, urlsplit

TOKEN_BODY = "grant_type=client_credentials"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent and answered (monotonic seconds), and how (status None = no HTTP answer)."""

    sent: float
    done: float
    status: int | None
    retry_after: bool = False
    error: str = ""
    thread: int = 0


def basic_header(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret, then HTTP Basic."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class Connection:
    """One keep-alive HTTP/1.1 connection from a chosen loopback source address; reopened after an error."""

    def __init__(self, url: str, source: str = "127.0.0.1", timeout: float = 5.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.source = source
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None) -> Reply:
        """One request; OSError or HTTPException when no HTTP answer came (the connection is then dropped)."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout, source_address=(self.source, 0))
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        try:
            self._conn.request(method, path, body=body, headers=headers)
            response = self._conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class InProcessConnection:
    """The same interface over a Flask test client: a worker in this process (for an injected clock)."""

    def __init__(self, app: Any):
        self.client = app.test_client()

    def request(self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None) -> Reply:
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        response = self.client.open(path, method=method, data=body, headers=headers)
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.get_data())

    def close(self) -> None:
        pass


def timed(conn: Connection | InProcessConnection, path: str, body: str, headers: dict[str, str]) -> Answer:
    """POST and time one request; a missing HTTP answer is an Answer with status None."""
    sent = time.monotonic()
    try:
        reply = conn.request("POST", path, body, headers)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(sent, time.monotonic(), None, error=exc.__class__.__name__)
    done = time.monotonic()
    return Answer(sent, done, reply.status, "retry-after" in reply.headers, "" if reply.status < 400 else error_text(reply))


def error_text(reply: Reply) -> str:
    """`error: error_description` of an OAuth error answer, shortened."""
    try:
        body = reply.json()
        return f"{body.get('error')}: {str(body.get('error_description', ''))[:80]}"
    except (ValueError, AttributeError):
        return reply.body[:80].decode(errors="replace")


class TokenLoad:
    """`threads` threads asking for tokens with one set of credentials, each at most `rate` requests a second,
    until `stop()`, `max_requests` in all, or `max_seconds` — whichever comes first."""

    def __init__(
        self,
        url: str,
        client_id: str,
        secret: str,
        threads: int = 3,
        rate: float = 40.0,
        max_requests: int = 20_000,
        max_seconds: float = 60.0,
        source: str = "127.0.0.1",
        path: str = "/oauth/token",
        connect: Callable[[], Connection | InProcessConnection] | None = None,
        authorization: Callable[[], str] | None = None,
    ):
        """`authorization`, when given, makes each request's Authorization header (a new guess each time)."""
        self.connect = connect or (lambda: Connection(url, source))
        fixed = basic_header(client_id, secret)
        self.authorization = authorization or (lambda: fixed)
        self.threads = threads
        self.interval = 1.0 / rate
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.path = path
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> TokenLoad:
        deadline = time.monotonic() + self.max_seconds
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(deadline, index), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        self._stop.set()
        for worker in self._workers:
            worker.join(10)
        return self.answers

    def _run(self, deadline: float, index: int) -> None:
        conn = self.connect()
        next_at = time.monotonic()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if len(self.answers) >= self.max_requests:
                        return
                answer = replace(timed(conn, self.path, TOKEN_BODY, {"Authorization": self.authorization()}), thread=index)
                with self._lock:
                    self.answers.append(answer)
                if answer.status is None:
                    self._stop.wait(0.02)  # the server is not accepting: do not spin
                next_at = max(next_at + self.interval, time.monotonic() - self.interval)
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            conn.close()


@dataclass
class Window:
    """A fault's span on the monotonic clock; `unavailable` when the database or keyring is really down
    during it, so 503 with Retry-After is the right answer then."""

    start: float
    end: float | None = None
    unavailable: bool = False
    kills: list[float] = field(default_factory=list)  # when a worker was SIGKILLed


@dataclass
class FaultRow:
    """One line of the fault table."""

    fault: str
    seconds: float
    sent_during: int
    statuses_during: Counter
    connection_errors: int
    refusals: int
    allowed_503: int
    data_lost: int
    first_200_ms: float | None
    steady_ms: float | None
    sent_total: int
    refusal_samples: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log_excerpt: list[str] = field(default_factory=list)

    def lost_cell(self) -> str:
        if any(item.startswith("unverifiable") for item in self.lost):
            return "unverifiable (server down)"
        return str(self.data_lost)

    def markdown(self) -> str:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses_during.items(), key=lambda kv: str(kv[0])))
        return (
            f"| {self.fault} | {self.seconds:.1f} | {self.sent_during} | {statuses or '-'} | {self.connection_errors} | "
            f"{self.refusals} | {self.allowed_503} | {self.lost_cell()} | {_ms(self.first_200_ms)} | {_ms(self.steady_ms)} | "
            f"{'; '.join(self.notes) or '-'} |"
        )


def _ms(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


TABLE_HEADER = (
    "| fault | fault s | sent during | answers during, by status | connection errors (killed worker) | valid refused | "
    "503+Retry-After while down | "
    "data lost | first 200 after end, ms | steady 200s after end, ms | notes |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def killed_in_flight(answers: list[Answer], kills: list[float], within: float = 2.0) -> set[int]:
    """Indexes of the answers lost with a killed worker: on each load thread, the first missing answer
    within `within` seconds after each kill (that thread's connection was to the killed worker)."""
    found: set[int] = set()
    for kill in kills:
        seen_threads: set[int] = set()
        for i, a in sorted(enumerate(answers), key=lambda ia: ia[1].done):
            if a.status is None and kill <= a.done <= kill + within and a.thread not in seen_threads:
                seen_threads.add(a.thread)
                found.add(i)
    return found


def summarise(fault: str, answers: list[Answer], window: Window, lost: list[str], notes: list[str] | None = None) -> FaultRow:
    """Count what the load saw around `window`.

    A refusal is an answer other than 2xx to valid credentials — an HTTP 4xx/5xx, or no HTTP answer at all
    (the server is not accepting) — except a 503 with Retry-After sent while the database or keyring was
    really down, and the requests in flight on a killed worker's connections (counted apart as connection
    errors). Recovery runs from the fault's end to the first 200 answered after it, and to the last answer
    after it that was not a 200 (0 when there was none).
    """
    end = window.end if window.end is not None else window.start
    during = [a for a in answers if window.start <= a.sent <= end]
    in_flight = killed_in_flight(answers, window.kills)
    refusals, allowed, samples = 0, 0, []
    for i, a in enumerate(answers):
        if i in in_flight or (a.status is not None and a.status < 400):
            continue
        if window.unavailable and a.status == 503 and a.retry_after and window.start <= a.sent <= end:
            allowed += 1
            continue
        refusals += 1
        if len(samples) < 5:
            samples.append(f"{a.status or 'no answer'} ({a.error}) at {a.sent - window.start:+.2f}s")
    after = sorted((a for a in answers if a.done >= end), key=lambda a: a.done)
    first = next((a.done - end for a in after if a.status == 200), None)
    bad_after = [a.done - end for a in after if a.status != 200]
    steady: float | None = max(bad_after) if bad_after else 0.0
    if not any(a.status == 200 and a.done - end >= (steady or 0.0) for a in after):
        steady = None
    return FaultRow(
        fault=fault,
        seconds=end - window.start,
        sent_during=len(during),
        statuses_during=Counter("conn-error" if a.status is None else a.status for a in during),
        connection_errors=len(in_flight),
        refusals=refusals,
        allowed_503=allowed,
        data_lost=len(lost),
        first_200_ms=None if first is None else first * 1000,
        steady_ms=None if steady is None else steady * 1000,
        sent_total=len(answers),
        refusal_samples=samples,
        lost=list(lost),
        notes=list(notes or []) + answers_note(answers),
    )


def answers_note(answers: list[Answer]) -> list[str]:
    """The commonest answers other than 200, with their OAuth error, as one note."""
    common = Counter(f"{a.status or 'no answer'} {a.error}" for a in answers if a.status != 200).most_common(3)
    return [f"non-200 answers: {', '.join(f'{text.strip()} ×{n}' for text, n in common)}"] if common else []
