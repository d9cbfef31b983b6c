"""Where a cold start goes: what each added package costs, and one handler's profile.

    python -m benchmarks.profile imports            # M instructions per package (2 runs each)
    python -m benchmarks.profile cold webhook       # pyinstrument profile of one cold start
    python -m benchmarks.profile batch              # CPU per area of 100-message batches

``imports``: each package the relay adds on top of the Lambda runtime's boto3 and urllib3,
counted under callgrind (instructions, not time: the same whatever else the machine does). Each
count is a fresh ``python -S`` child of the same environment and bytecode as the cold start's
"webhook" variant (the layer as shipped, see _stack.BYTECODE) that imports boto3 and urllib3,
then the package, and ends with ``os._exit`` (no teardown, as _child.py). A package's cost is
its child's count less the baseline's (boto3 and urllib3 alone); "over" is the row it builds
on, so a row that extends another (the first validation, the botocore patch, idempotency)
shows what it adds itself.

``cold {webhook,delivery}``: one cold start (the handler's imports, its init, the first
invocation against moto_server and the loopback providers, tracing on, the layer as shipped),
as benchmarks.cold_start runs it, in a fresh child sampled by pyinstrument (wall clock, the main
thread only: delivery's provider threads appear as the wait for them). The place to look when a
cold-start target is missed. pyinstrument itself is imported first (from a directory added last
to PYTHONPATH), so the standard library modules it loads are not in the profile: the header
lists them.

``batch``: benchmarks.batch_profile (its docstring).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._stack import (
    BENCH,
    BYTECODE,
    CALLGRIND,
    HANDLERS,
    PYTHON,
    TIMEOUTS,
    BenchStack,
    _link_dists,
    git_revision,
    import_statements,
    instructions_counted,
    markdown_table,
    run_child,
    write_result,
)
from benchmarks.cold_start import check, event_for

RESULTS = BENCH / "results"
BASELINE = "import boto3, urllib3"
POWERTOOLS = (  # as relay.observability imports them
    "from aws_lambda_powertools import Logger, Metrics, Tracer\n"
    "from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit"
)
PHONENUMBERS = "import phonenumbers"
XRAY = "import aws_xray_sdk.core"
# name: (what the child runs after the baseline, the row it builds on or None: the baseline)
PACKAGES: dict[str, tuple[str, str | None]] = {
    "phonenumbers": (PHONENUMBERS, None),
    "phonenumbers, first is_valid_number (US)": (
        f"{PHONENUMBERS}\nphonenumbers.is_valid_number(phonenumbers.parse('+14155550123', None))",
        "phonenumbers",
    ),
    # How the relay loads it (relay/phone.py): phonenumberutil without the package's __init__.
    "relay.phone (phonenumberutil alone), first is_valid_number (US)": (
        "from relay.phone import is_valid_number\nis_valid_number('+14155550123')",
        None,
    ),
    "Powertools logger, metrics, tracer": (POWERTOOLS, None),
    "aws_xray_sdk.core": (XRAY, None),
    "X-Ray botocore patch": (f"{XRAY}\naws_xray_sdk.core.patch(['botocore'])", "aws_xray_sdk.core"),
    "Powertools idempotency": (  # as relay.idempotency imports it
        f"{POWERTOOLS}\n"
        "from aws_lambda_powertools.utilities.idempotency import (\n"
        "    DynamoDBPersistenceLayer, IdempotencyConfig, idempotent_function)\n"
        "from aws_lambda_powertools.utilities.idempotency.exceptions import (\n"
        "    IdempotencyAlreadyInProgressError, IdempotencyPersistenceLayerError,\n"
        "    IdempotencyValidationError)",
        "Powertools logger, metrics, tracer",
    ),
}
# Run first in the cold child (exec'd by _child.py before the handler's imports, after a line
# setting PROFILE_PATH): start the profiler; write its text when _child.py calls os._exit.
PROFILER = """\
import os, sys
_before = set(sys.modules)
from pyinstrument import Profiler
_preloaded = sorted({m.split(".")[0] for m in set(sys.modules) - _before} - {"pyinstrument"})
_profiler = Profiler(interval=0.0005)
_exit = os._exit

def _stop(code):
    _profiler.stop()
    with open(PROFILE_PATH, "w") as out:
        out.write("pyinstrument loaded first (not in the profile): " + " ".join(_preloaded))
        out.write("\\n" + _profiler.output_text(unicode=True, show_all=False))
    _exit(code)

os._exit = _stop
_profiler.start()
"""


def count(env: dict[str, str], code: str) -> int:
    """Instructions of a fresh ``python -S`` child running the baseline then ``code``."""
    source = f"{BASELINE}\n{code}\nimport os\nos._exit(0)\n"
    done = subprocess.run(
        [*CALLGRIND, *PYTHON, "-c", source], env=env, capture_output=True, text=True, check=True
    )
    return instructions_counted(code.splitlines()[0], {"wrapper_stderr": done.stderr})


def imports(runs: int) -> None:
    counts: dict[str, list[int]] = {name: [] for name in ["baseline", *PACKAGES]}
    with BenchStack(latency=0.0) as stack:
        env = stack.process_env("webhook", bytecode="shipped")
        for _ in range(runs):
            counts["baseline"].append(count(env, "pass"))
            for name, (code, _) in PACKAGES.items():
                counts[name].append(count(env, code))
    median = {name: statistics.median(values) for name, values in counts.items()}
    spread = {name: (max(values) - min(values)) / 1e6 for name, values in counts.items()}
    base_m = f"{median['baseline'] / 1e6:.0f} (all of it)"
    rows = [["baseline: boto3 + urllib3", base_m, "", f"{spread['baseline']:.1f}"]]
    for name, (_, base) in PACKAGES.items():
        total = (median[name] - median["baseline"]) / 1e6
        own = "" if base is None else f"{(median[name] - median[base]) / 1e6:.1f} ({base})"
        rows.append([name, f"{total:.1f}", own, f"{spread[name]:.1f}"])
    out = write_result(
        RESULTS / "profile_imports.json",
        {"benchmark": "profile_imports", "runs": runs, "baseline": BASELINE, "counts": counts},
    )
    print(f"## Instructions per package on top of boto3 + urllib3 (callgrind, median of {runs})\n")
    headers = ["package", "M instructions over baseline", "over the row it extends", "spread (M)"]
    print(markdown_table(headers, rows))
    print(f"\nWrote {out}")


def cold(handler: str, bytecode: str) -> None:
    with BenchStack(latency=0.0) as stack, tempfile.TemporaryDirectory() as scratch:
        tools = Path(scratch) / "pyinstrument"
        _link_dists(tools, ["pyinstrument"])
        env = stack.process_env(handler, bytecode=bytecode)
        env["PYTHONPATH"] += os.pathsep + str(tools)  # last: it shadows nothing the handler uses
        text = Path(scratch) / "profile.txt"
        statements = import_statements(HANDLERS[handler])
        result = run_child(
            HANDLERS[handler],
            env,
            [event_for(handler, 0, 1)],
            mode="cold",
            timeout_s=TIMEOUTS[handler],
            prelude=f"PROFILE_PATH = {str(text)!r}\n{PROFILER}{statements}",
        )
        check(handler, result["answers"])
        revision = git_revision()
        header = (
            f"python -m benchmarks.profile cold {handler} (layer bytecode: {bytecode}) at "
            f"{revision['commit']}{' (dirty)' if revision['dirty'] else ''}, "
            f"Python {sys.version.split()[0]}\n"
        )
        profile = header + text.read_text()
    out = RESULTS / f"profile_{handler}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(profile)
    print(profile)
    print(f"Wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    counted = commands.add_parser("imports", help="M instructions per package (callgrind)")
    counted.add_argument("--runs", type=int, default=2, help="children per package (median)")
    profiled = commands.add_parser("cold", help="pyinstrument profile of one cold start")
    profiled.add_argument("handler", choices=("webhook", "delivery"))
    profiled.add_argument("--bytecode", choices=BYTECODE, default="shipped", help="the layer's")
    batched = commands.add_parser("batch", help="CPU per area of the delivery function's batch")
    batched.add_argument("--messages", type=int, default=100)
    batched.add_argument("--latency-ms", type=int, default=50)
    batched.add_argument("--mix", choices=("single", "mixed"), default="mixed")
    batched.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    if args.command == "imports":
        imports(args.runs)
    elif args.command == "cold":
        cold(args.handler, args.bytecode)
    else:
        from benchmarks import batch_profile  # its imports load the relay's stack

        batch_profile.run(args.messages, args.latency_ms, args.mix, args.batches)


if __name__ == "__main__":
    main()
