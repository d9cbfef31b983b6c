"""RELAY_HYPOTHESIS_REPORT's plugin (tests/property/hypothesis_report.py) counts what each test
tried, explicit examples and events included, with and without pytest-xdist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO
from tests.property.hypothesis_report import ENV

SAMPLE = """
from hypothesis import assume, event, example, given, settings, strategies as st, target

@given(n=st.integers(0, 9))
@example(n=100)
@settings(max_examples=40, database=None)
def test_counts(n):
    assume(n != 3)
    event("big" if n >= 5 else "small")
    target(float(n), label="n")

@given(st.booleans())
@settings(max_examples=5, database=None)
def test_fails(flag):
    assert flag is not None and False

def test_plain():
    pass
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_each_tests_cases_and_events_are_counted(tmp_path, workers):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SAMPLE))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    report = tmp_path / "runs" / "hostile.json"
    env = {
        **os.environ,
        ENV: str(report),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "local")]),
    }

    plugin = ["-p", "tests.property.hypothesis_report", "-p", "no:cacheprovider"]
    args = [*plugin, "--hypothesis-seed=7", *workers, "test_sample.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 1, done.stdout + done.stderr  # test_fails fails, as it should
    written = json.loads(report.read_text())
    tests = written["tests"]
    counts = tests["test_sample.py::test_counts"]
    assert counts["outcome"] == "passed"
    found = counts["hypothesis"]
    assert found["by_phase"]["explicit"] == {"passed": 1}
    generated = found["by_phase"]["generate"]
    assert generated["passed"] == len(range(10)) - 1  # all but 3, each once (then exhausted)
    assert found["passed"] == generated["passed"] + 1
    assert found["cases"] == found["passed"] + generated.get("gave_up", 0)
    # Every case that ran to its event() recorded one; the explicit example's (100) included.
    assert found["events_in_passed_cases"] == {"big": 5 + 1, "small": 4}
    assert found["targets"]["n"]["best"] == 100.0
    assert tests["test_sample.py::test_fails"]["outcome"] == "failed"
    assert "shrink" in tests["test_sample.py::test_fails"]["hypothesis"]["by_phase"]
    assert tests["test_sample.py::test_plain"] == {
        "outcome": "passed",
        "seconds": tests["test_sample.py::test_plain"]["seconds"],
    }
    assert written["summary"]["tests"] == 3
    assert written["summary"]["explicit examples"] == 1
    assert written["hypothesis_seed"] == "7"
