"""Per-test Hypothesis counts, as JSON: what each property and Schemathesis test tried.

    RELAY_HYPOTHESIS_REPORT=docs/runs/hostile-input-seed7-<commit>.json \
        pytest --hypothesis-seed=7 tests/property tests/e2e/test_schemathesis.py

For each test run (a parametrized test: each case), the file holds its outcome and time, and
for a Hypothesis test: the test cases it ran by phase (``explicit`` for ``@example``s, then
``generate``, ``target``, ``shrink`` ...) and status (``passed``, ``gave_up``: rejected by
``assume`` or a filter, ``failed``); each ``event()`` with the number of test cases that
recorded it, by phase and in all (shrinking left out, as it repeats a failure), and in the
passing cases alone (Hypothesis's own events about drawing data apart, as
``generation_notes``); each ``target()`` label's best score and how many cases reported it; and
why Hypothesis stopped. These are the figures docs/reliability.md and docs/hostile-input.md
quote, counted rather than worked out from the percentages ``--hypothesis-show-statistics``
prints (which leave out explicit examples).

The counts come from Hypothesis's observability callbacks (one observation per test case,
explicit examples included) and, for the reason it stopped, from the statistics collector
behind ``--hypothesis-show-statistics``. tests/conftest.py registers this plugin when
``RELAY_HYPOTHESIS_REPORT`` is set; otherwise nothing here runs. Under pytest-xdist the workers
attach each test's counts to its report, and the controller writes the file.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Generator

ENV = "RELAY_HYPOTHESIS_REPORT"
PROPERTY = "relay-hypothesis-report"  # the user property carrying a test's counts
# What the figures measured: the code under test, the tests, and the document Schemathesis reads.
CODE_PATHS = ("template.yaml", "layers", "functions", "local", "tests", "docs/openapi.yaml")
# Events Hypothesis records itself, about drawing data (a filter retried, a recursive strategy
# cut short), not the test's: kept apart, as ``generation_notes``.
OWN_EVENTS = ("Retried draw from ", "Draw for ", "Aborted test because")


def register(config: pytest.Config) -> None:
    """Register the plugin if ``$RELAY_HYPOTHESIS_REPORT`` names a file (tests/conftest.py)."""
    if (path := os.environ.get(ENV)) and not config.pluginmanager.has_plugin(PROPERTY):
        config.pluginmanager.register(HypothesisReport(Path(path)), PROPERTY)


def pytest_configure(config: pytest.Config) -> None:  # as a plugin of its own: -p this module
    register(config)


def summarize(observations: list[Any], stopped_because: str | None) -> dict[str, Any]:
    """One test's counts from its test cases' observations (TestCaseObservation)."""
    by_phase: dict[str, Counter[str]] = defaultdict(Counter)
    events: dict[str, Counter[str]] = defaultdict(Counter)
    passing: Counter[str] = Counter()  # events of the cases that passed, shrinking aside
    notes: Counter[str] = Counter()  # Hypothesis's own events (OWN_EVENTS)
    targets: dict[str, list[float]] = defaultdict(list)
    for seen in observations:
        phase = "explicit" if seen.how_generated == "explicit example" else seen.metadata.phase
        phase = str(phase or "unknown")
        by_phase[phase][seen.status] += 1
        for feature, value in seen.features.items():
            if feature.startswith("target:") or feature == "target":
                targets[feature.removeprefix("target").lstrip(":")].append(float(value))
            elif feature.startswith(OWN_EVENTS):
                notes[feature] += 1
            else:
                events[phase][feature] += 1
                passing[feature] += seen.status == "passed" and phase != "shrink"
    counted = [phase for phase in events if phase != "shrink"]
    return {
        "cases": sum(sum(statuses.values()) for statuses in by_phase.values()),
        "passed": sum(statuses["passed"] for statuses in by_phase.values()),
        "by_phase": {phase: dict(statuses) for phase, statuses in by_phase.items()},
        # As --hypothesis-show-statistics counts them (its shares times the cases): every case
        # that recorded the event, rejected ones included; then the passing cases alone.
        "events": dict(sorted(sum((events[phase] for phase in counted), Counter()).items())),
        "events_in_passed_cases": dict(sorted((+passing).items())),
        "events_by_phase": {
            phase: dict(sorted(counts.items())) for phase, counts in events.items()
        },
        "generation_notes": dict(sorted(notes.items())),
        "targets": {
            label: {"best": max(scores), "cases": len(scores)} for label, scores in targets.items()
        },
        "stopped_because": stopped_because,
    }


class HypothesisReport:
    """The plugin: counts each test's cases as it runs, writes them all when the session ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}

    # Innermost of the wrappers, inside Hypothesis's own (which sets its statistics collector,
    # chained to below), so that both see the same test cases.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        from hypothesis.internal import observability
        from hypothesis.statistics import collector

        observations: list[Any] = []
        stopped: list[str] = []
        outer = collector.value

        def observe(observation: Any) -> None:
            if observation.type == "test_case":
                observations.append(observation)

        def note_statistics(statistics: dict[str, Any]) -> None:
            stopped.append(str(statistics.get("stopped-because", "")))
            if outer is not None:
                outer(statistics)

        # Counts only: no line coverage of each test case, which observability collects by
        # default and which triples the tests' time on Python 3.11 (Hypothesis reads the flag
        # at each test, and supports setting it so).
        covering = observability.OBSERVABILITY_COLLECT_COVERAGE
        observability.OBSERVABILITY_COLLECT_COVERAGE = False
        try:
            with (
                observability.with_observability_callback(observe),
                collector.with_value(note_statistics),
            ):
                return (yield)
        finally:
            observability.OBSERVABILITY_COLLECT_COVERAGE = covering
            if observations:
                counts = summarize(observations, stopped[-1] if stopped else None)
                item.user_properties.append((PROPERTY, json.dumps(counts)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + report.duration, 2)
        if report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"
        for name, value in report.user_properties:
            if name == PROPERTY:
                entry["hypothesis"] = json.loads(value)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        config = session.config
        if hasattr(config, "workerinput"):  # an xdist worker: the controller writes
            return
        from relay_local.checkout import revision
        from relay_local.lambda_runtime import REPO

        hypothesis_tests = [t["hypothesis"] for t in self.tests.values() if "hypothesis" in t]
        outcomes = Counter(test["outcome"] for test in self.tests.values())
        written = {
            **revision(REPO, *CODE_PATHS),
            "command": ["pytest", *config.invocation_params.args],
            "hypothesis_seed": config.getoption("hypothesis_seed", None),
            "python": sys.version.split()[0],
            "summary": {
                "tests": len(self.tests),
                **{outcome: outcomes[outcome] for outcome in sorted(outcomes)},
                "hypothesis tests": len(hypothesis_tests),
                "test cases": sum(t["cases"] for t in hypothesis_tests),
                "passed test cases": sum(t["passed"] for t in hypothesis_tests),
                "explicit examples": sum(
                    sum(t["by_phase"].get("explicit", {}).values()) for t in hypothesis_tests
                ),
            },
            "tests": self.tests,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"Hypothesis counts per test: {self.path}")
