"""Thousands of messages through both entry points under seeded provider faults: none lost,
every one delivered once or parked with its reason, duplicates only after ambiguous sends."""

from __future__ import annotations

import pytest

from tests.reliability.harness import run

# Alone on one xdist worker with the crash test: they load the machine, and share nothing.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

MESSAGES = 2000  # `make soak` runs 50,000 with the same harness
SEED = 7


def test_nothing_is_lost_and_nothing_is_sent_twice_without_cause():
    report = run(MESSAGES, SEED)

    print("\n" + report.table())
    assert report.lost == []
    assert report.unexplained_duplicates == []
    assert report.violations == []  # every request the relay made followed the provider's spec
    assert sum(report.entry.values()) == MESSAGES
    assert set(report.dead_letter_kinds) <= {"invalid", "permanent", "exhausted"}
    # The faults really happened, through both entry points.
    assert all(
        report.faults[name] > 0
        for name in (
            "5xx",
            "429 Retry-After",
            "reset before read",
            "reset after read",
            "hang past timeout",
            "slow answer",
            "malformed body",
            "permanent 4xx",
        )
    )
    assert set(report.entry) == {"sqs", "http async", "http sync"}
    assert report.dead_letter_kinds["invalid"] > 0  # producers' broken messages, parked
