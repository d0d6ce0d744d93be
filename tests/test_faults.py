"""The fault suite: under a few seconds of bounded token load, each fault is injected; valid
credentials must not be refused (except 503 + Retry-After while the database is really down) and nothing
acknowledged before the fault may be lost. `benchmarks/faults.py` runs the same faults longer and prints the table.

Faults needing PostgreSQL or Redis start private servers on free ports and fail, never skip, when the
binaries are missing.
"""

from __future__ import annotations

import pytest

from .fault_injection import FAULTS, Timing
from .token_load import TABLE_HEADER, FaultRow

# Private PostgreSQL/Redis servers, not the machine's: no postgres/redis marks.
pytestmark = [pytest.mark.live, pytest.mark.slow]

TIMING = Timing(before=1.0, fault=1.5, after=1.5, threads=3, rate=25.0)


def explain(row: FaultRow) -> str:
    return "\n".join(
        [
            TABLE_HEADER,
            row.markdown(),
            f"refusals: {row.refusal_samples}",
            f"lost: {row.lost}",
            *row.notes,
            "server log:",
            *row.log_excerpt,
        ],
    )


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault(fault, tmp_path):
    row = FAULTS[fault](tmp_path, TIMING)
    print(explain(row))
    assert row.sent_total > 50, explain(row)
    assert row.sent_during > 0, explain(row)
    assert row.lost == [], explain(row)
    assert row.refusals == 0, explain(row)
    assert row.steady_ms is not None, explain(row)
