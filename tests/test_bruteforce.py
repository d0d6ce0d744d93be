"""A shortened brute force (benchmarks/bruteforce.py runs it longer): a client's valid secret is
never refused because of wrong guesses for its id, from its own address or elsewhere; the guesses get 429
past the limit and write a bounded number of audit lines."""

from __future__ import annotations

import pytest

from .brute_force import brute_force

pytestmark = [pytest.mark.live, pytest.mark.slow]

SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
# The failures the limit admits (10 a minute per client id, counted per worker with memory:// storage, two
# workers) plus a few throttling notices per attacking address and worker; the attack sends up to ~133 guesses.
AUDIT_LINE_BOUND = 2 * 10 + 2 * 2 * len(SOURCES)


def test_brute_force_never_refuses_valid_credentials(tmp_path):
    result = brute_force(tmp_path, seconds=8, per_minute=1000, sources=SOURCES, valid_rate=5.0)
    report = result.markdown() + "\nserver log:\n" + "\n".join(result.log_excerpt)
    print(report)
    assert result.attack_sent > 80, report
    assert result.valid_sent > 30 and result.bystander_sent > 30, report
    assert result.attack_own[429] + result.attack_other[429] > 0, report
    assert result.valid_refused == 0, report
    assert result.bystander_refused == 0, report
    assert result.attack_audit_lines <= AUDIT_LINE_BOUND, report
