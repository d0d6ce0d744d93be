"""A bounded brute force of wrong secrets against a known client id, from the client's own address and from
others (127.0.0.x on loopback), while the client and a bystander on the same address ask for tokens with
their valid secrets (valid credentials are never refused because of failed attempts; the attack is
answered 429 past the limit and writes a bounded number of audit lines)."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .fault_injection import AUDIENCE, Stack
from .token_load import TokenLoad, basic_header

OWN_ADDRESS = "127.0.0.1"


@dataclass
class BruteForceResult:
    seconds: float
    per_minute: int
    sources: list[str]
    valid_sent: int
    valid_answers: Counter
    bystander_sent: int
    bystander_answers: Counter
    attack_own: Counter
    attack_other: Counter
    attack_sent: int
    attack_audit_lines: int
    audit_lines_total: int
    first_refusal_s: float | None
    log_excerpt: list[str]

    @property
    def valid_refused(self) -> int:
        return sum(n for status, n in self.valid_answers.items() if status is None or status >= 400)

    @property
    def bystander_refused(self) -> int:
        return sum(n for status, n in self.bystander_answers.items() if status is None or status >= 400)

    def markdown(self) -> str:
        def by_status(counter: Counter) -> str:
            return ", ".join(f"{'no answer' if s is None else s}: {n}" for s, n in sorted(counter.items(), key=lambda kv: str(kv[0])))

        first = "never" if self.first_refusal_s is None else f"{self.first_refusal_s:.1f} s into the attack"
        return "\n".join(
            [
                f"Brute force: {self.per_minute} wrong secrets a minute for {self.seconds:.0f} s against one client id, "
                f"from {', '.join(self.sources)} (own address {OWN_ADDRESS})",
                "",
                "| who | sent | answers by status | refused |",
                "|---|---|---|---|",
                f"| the client, valid secret, {OWN_ADDRESS} | {self.valid_sent} | {by_status(self.valid_answers)} | {self.valid_refused} |",
                f"| a bystander client, valid secret, {OWN_ADDRESS} | {self.bystander_sent} | {by_status(self.bystander_answers)} | "
                f"{self.bystander_refused} |",
                f"| attacker from {OWN_ADDRESS} | {sum(self.attack_own.values())} | {by_status(self.attack_own)} | - |",
                f"| attacker from other addresses | {sum(self.attack_other.values())} | {by_status(self.attack_other)} | - |",
                "",
                f"First valid request refused: {first}.",
                f"Audit lines written for the attack: {self.attack_audit_lines} for {self.attack_sent} attempts "
                f"({self.audit_lines_total} audit lines in all).",
            ]
        )


def audit_events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": "broken-line"})
    return events


def brute_force(
    directory: Path,
    seconds: float = 30.0,
    per_minute: int = 1000,
    sources: tuple[str, ...] = (OWN_ADDRESS, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"),
    valid_rate: float = 5.0,
    workers: int = 2,
) -> BruteForceResult:
    """Run the attack for `seconds` with the valid client and a bystander loading throughout; everything bounded."""
    stack = Stack(directory, workers=workers)
    bystander, bystander_secret = "bystander", stack.clients.create("bystander", scopes=["read"], audiences=[AUDIENCE])[1]
    audit = Path(stack.env["TOKENDEALER_AUDIT_LOG"])
    stack.start()
    try:
        lines_at_start = len(audit_events(audit)) if audit.exists() else 0
        bound = seconds + 60
        valid = TokenLoad(stack.url, stack.client_id, stack.secret, threads=1, rate=valid_rate, max_seconds=bound, max_requests=10_000)
        other = TokenLoad(stack.url, bystander, bystander_secret, threads=1, rate=valid_rate, max_seconds=bound, max_requests=10_000)

        def guess() -> str:
            return basic_header(stack.client_id, secrets.token_urlsafe(32))

        per_source = per_minute / 60 / len(sources)
        attackers = {
            source: TokenLoad(
                stack.url,
                stack.client_id,
                "",
                threads=1,
                rate=per_source,
                max_seconds=seconds,
                max_requests=int(per_minute * seconds / 60 / len(sources)) + 1,
                source=source,
                authorization=guess,
            )
            for source in sources
        }
        with valid, other:
            time.sleep(1.0)
            attack_start = time.monotonic()
            with contextlib.ExitStack() as attack:
                for attacker in attackers.values():
                    attack.enter_context(attacker)
                time.sleep(seconds)
            time.sleep(1.0)
        attack_own = Counter(a.status for s, at in attackers.items() if s == OWN_ADDRESS for a in at.answers)
        attack_other = Counter(a.status for s, at in attackers.items() if s != OWN_ADDRESS for a in at.answers)
        refused_at = [a.sent - attack_start for a in valid.answers + other.answers if a.status is None or a.status >= 400]
        valid_answers = Counter(a.status for a in valid.answers)
        bystander_answers = Counter(a.status for a in other.answers)
        events = audit_events(audit)[lines_at_start:]
        legit_refused = sum(n for s, n in (valid_answers + bystander_answers).items() if s is None or s >= 400)
        # Each valid request writes one line (issued or refused); every other line is the attack's.
        attack_lines = max(0, sum(1 for e in events if e.get("event") != "token.issued") - legit_refused)
        return BruteForceResult(
            seconds=seconds,
            per_minute=per_minute,
            sources=list(sources),
            valid_sent=len(valid.answers),
            valid_answers=valid_answers,
            bystander_sent=len(other.answers),
            bystander_answers=bystander_answers,
            attack_own=attack_own,
            attack_other=attack_other,
            attack_sent=sum(len(a.answers) for a in attackers.values()),
            attack_audit_lines=attack_lines,
            audit_lines_total=len(events),
            first_refusal_s=min(refused_at) if refused_at else None,
            log_excerpt=stack.log_excerpt(),
        )
    finally:
        stack.close()
