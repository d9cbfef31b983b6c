"""Cold start: a fresh Python process, from exec to each handler's first answer, vs. the floor.

    python -m benchmarks.cold_start --quick          # 3 rounds, 1 count each: about 4 minutes
    python -m benchmarks.cold_start                  # 45 rounds, 3 counts: about 15 minutes
    python -m benchmarks.cold_start --python ~/.pyenv/versions/3.13.0/bin/python3.13 \
        --out benchmarks/results/cold_start-py313.json   # children on Lambda's 3.13

Each round starts one fresh process per variant (relay and floor interleaved, order reversed
every other round so drift cancels) against the same moto_server and loopback providers (zero
latency). Runs of 15 rounds gave ratios from 1.07x to 1.43x on this machine, hence 45, and
the paired ratio (the median of each round's relay/floor) beside the medians' ratio. A process
records ``time.perf_counter()`` on its first line and at each phase:

* startup: interpreter start (the parent's clock just before exec, to the child's first line);
* imports: the handler's own top-level import statements (and whatever module-level objects the
  imported modules build, e.g. relay.observability's Tracer);
* init: the handler module's body, its imports now cached (Relay.from_env(), boto3 clients);
* first invoke: the first event, answered (secrets, idempotency record, provider POST).

``spawn→answer`` is the parent's clock from just before exec to the answer's arrival. The relay
runs as deployed (X-Ray tracing active, see _stack.py) and also with tracing off, to show what
tracing costs. ``python -X importtime`` of each handler's imports is summarized at the end.

Bytecode (``_stack.BYTECODE``): /opt is read-only on Lambda, so the layer's modules load from
whatever bytecode the layer ships, or are compiled at every cold start. "webhook" and "delivery"
run as deployed: the layer's bytecode compiled in it (unchecked-hash, as layers/relay/Makefile
builds it). ", no bytecode" is a layer built without (no CPython 3.13 at build time): each of its
modules compiled in the cold start. ", dev caches" is the dev venv's own ``__pycache__`` (how this
benchmark measured before). The floors, and the runtime's boto3, botocore, urllib3 and standard
library, keep their bytecode throughout: the Lambda runtime ships its own compiled.

Interpreter: every child (relay and floors alike, so the ratios compare like with like, and the
``-X importtime`` and callgrind children too) runs ``python -S`` of the dev venv by default.
``--python PATH`` (or ``BENCH_PYTHON=PATH``) runs them on that CPython instead, e.g. 3.13 as
Lambda's python3.13: its layer and runtime distributions are wheels for its version, installed
once by the venv's pip into ``.venv/bench-sites/`` (see _stack.py), and the "shipped" bytecode is
compiled by it. The result's ``meta.child_python`` records the interpreter the children ran.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
from collections import defaultdict
from typing import Any

from benchmarks._stack import (
    CALLGRIND,
    HANDLERS,
    TIMEOUTS,
    BenchStack,
    http_event,
    import_statements,
    instructions_counted,
    markdown_table,
    message,
    run_child,
    sqs_event,
    summarize,
    write_result,
)

TARGET = 1.25  # relay cold start <= 1.25 x the floor's
# name: (handler, traced, floor to compare with, the layer's bytecode: see _stack.BYTECODE)
VARIANTS: dict[str, tuple[str, bool, str | None, str]] = {
    "webhook": ("webhook", True, "webhook-floor", "shipped"),
    "webhook-floor": ("webhook-floor", False, None, "cached"),
    "webhook, tracing off": ("webhook", False, "webhook-floor", "shipped"),
    "webhook, no bytecode": ("webhook", True, "webhook-floor", "none"),
    "webhook, dev caches": ("webhook", True, "webhook-floor", "cached"),
    "delivery": ("delivery", True, "delivery-floor", "shipped"),
    "delivery-floor": ("delivery-floor", False, None, "cached"),
    "delivery, tracing off": ("delivery", False, "delivery-floor", "shipped"),
    "delivery, no bytecode": ("delivery", True, "delivery-floor", "none"),
    "delivery, dev caches": ("delivery", True, "delivery-floor", "cached"),
}
PHASES = (
    "startup_s",
    "imports_s",
    "init_s",
    "invoke_s",
    "total_s",
    "spawn_to_answer_s",
    "cpu_imports_s",
    "cpu_init_s",
    "cpu_invoke_s",
    "cpu_total_s",
)


def event_for(handler: str, i: int, delivery_batch: int) -> dict[str, Any]:
    if handler.startswith("webhook"):
        return http_event(message(i))
    return sqs_event([message(i * delivery_batch + n) for n in range(delivery_batch)])


def check(name: str, answers: dict[str, int]) -> None:
    """A benchmark of failing requests measures nothing: every answer must be a success."""
    ok = answers.get("status_201") == 1 or (
        answers.get("batches") == 1 and answers.get("batch_item_failures") == 0
    )
    if not ok:
        raise RuntimeError(f"{name}: the first invocation did not succeed: {answers}")


def measure(stack: BenchStack, rounds: int, delivery_batch: int) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    names = list(VARIANTS)
    for round_number in range(rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            handler, traced, _, bytecode = VARIANTS[name]
            result = run_child(
                HANDLERS[handler],
                stack.process_env(handler, tracing=traced, bytecode=bytecode),
                [event_for(handler, round_number, delivery_batch)],
                mode="cold",
                tracing=traced,
                timeout_s=TIMEOUTS[handler.removesuffix("-floor")],
                prelude=import_statements(HANDLERS[handler]),
                python=stack.python,
            )
            check(name, result["answers"])
            result["startup_s"] = result["t0"] - result["spawned_at"]
            runs[name].append(result)
    return runs


_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def instructions(stack: BenchStack, rounds: int, delivery_batch: int) -> dict[str, list[int]]:
    """Instructions each variant executes from exec to its first answer, under callgrind.

    A count, not a time: the same for the same code and inputs whatever else the machine does,
    so the ratio needs no statistics. It leaves out waiting (on moto_server, the providers),
    which the wall-clock ratio includes."""
    counts: dict[str, list[int]] = defaultdict(list)
    for round_number in range(rounds):
        for name, (handler, traced, _, bytecode) in VARIANTS.items():
            result = run_child(
                HANDLERS[handler],
                stack.process_env(handler, tracing=traced, bytecode=bytecode),
                [event_for(handler, 1000 + round_number, delivery_batch)],
                mode="cold",
                tracing=traced,
                timeout_s=TIMEOUTS[handler.removesuffix("-floor")],
                prelude=import_statements(HANDLERS[handler]),
                wrapper=CALLGRIND,
                python=stack.python,
            )
            check(name, result["answers"])
            counts[name].append(instructions_counted(name, result))
    return counts


def importtime(
    stack: BenchStack, handler: str, repeats: int, bytecode: str = "shipped"
) -> dict[str, dict[str, float]]:
    """``python -X importtime`` of the handler's import statements: per module, the median
    self and cumulative microseconds over ``repeats`` fresh processes, and its depth."""
    samples: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for _ in range(repeats):
        done = subprocess.run(
            [*stack.python, "-X", "importtime", "-c", import_statements(HANDLERS[handler])],
            env=stack.process_env(handler, bytecode=bytecode),
            capture_output=True,
            text=True,
            check=True,
        )
        for line in done.stderr.splitlines():
            match = _LINE.match(line)
            if match:
                self_us, cumulative_us, indent, module = match.groups()
                samples[module].append((int(self_us), int(cumulative_us), len(indent) // 2))
    return {
        module: {
            "self_us": statistics.median(s[0] for s in values),
            "cumulative_us": statistics.median(s[1] for s in values),
            "depth": values[0][2],
        }
        for module, values in samples.items()
    }


def import_report(relay: dict[str, dict[str, float]], floor: dict[str, dict[str, float]]) -> Any:
    """Top offenders by cumulative time, and what the relay imports that the floor does not,
    summed by top-level package (self time, so nothing is counted twice)."""
    top = sorted(relay.items(), key=lambda item: -item[1]["cumulative_us"])[:15]
    extra: dict[str, float] = defaultdict(float)
    for module, times in relay.items():
        if module not in floor:
            extra[module.split(".")[0]] += times["self_us"] / 1000
    return {
        "total_self_ms": sum(t["self_us"] for t in relay.values()) / 1000,
        "floor_total_self_ms": sum(t["self_us"] for t in floor.values()) / 1000,
        "modules": len(relay),
        "floor_modules": len(floor),
        "top_cumulative": [
            {"module": m, "cumulative_ms": t["cumulative_us"] / 1000, "depth": t["depth"]}
            for m, t in top
        ],
        "relay_only_by_package_ms": dict(sorted(extra.items(), key=lambda kv: -kv[1])),
    }


def ms(value: float) -> str:
    return f"{value * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 importtime run")
    parser.add_argument("--rounds", type=int, help="fresh processes per variant (default 45)")
    parser.add_argument("--delivery-batch", type=int, default=1, help="records in its 1st event")
    parser.add_argument(
        "--instructions",
        type=int,
        help="rounds under callgrind, counting instructions (default 3, --quick 1; 0: none)",
    )
    parser.add_argument(
        "--python",
        default=os.environ.get("BENCH_PYTHON") or None,
        help="the children's interpreter, e.g. a CPython 3.13 (default: this venv's; BENCH_PYTHON)",
    )
    parser.add_argument("--out", default="benchmarks/results/cold_start.json")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 45)
    counted = args.instructions if args.instructions is not None else (1 if args.quick else 3)
    if counted and shutil.which("valgrind") is None:
        print("valgrind not found: no instruction counts")
        counted = 0

    with BenchStack(latency=0.0, python=args.python) as stack:
        runs = measure(stack, rounds, args.delivery_batch)
        repeats = 1 if args.quick else 3
        imports = {
            name: importtime(stack, name, repeats)
            for name in ("webhook", "webhook-floor", "delivery", "delivery-floor")
        }
        uncompiled = {
            name: importtime(stack, name, repeats, bytecode="none")
            for name in ("webhook", "delivery")
        }
        trace_datagrams = stack.trace_datagrams
        counts = instructions(stack, counted, args.delivery_batch) if counted else {}
        interpreter = stack.interpreter

    summary = {
        name: {p: summarize([r[p] for r in results]) for p in PHASES}
        for name, results in runs.items()
    }
    rows, verdicts = [], {}
    for name, (_, _, floor, _) in VARIANTS.items():
        s = summary[name]
        ratio = ratio_cpu = None
        if floor is not None:
            f = summary[floor]
            ratio = s["spawn_to_answer_s"]["median"] / f["spawn_to_answer_s"]["median"]
            ratio_cpu = s["cpu_total_s"]["median"] / f["cpu_total_s"]["median"]
            # Each round runs every variant once: the median of each round's relay/floor
            # is less swayed by the machine drifting between rounds than the medians' ratio.
            paired = statistics.median(
                r["spawn_to_answer_s"] / f_r["spawn_to_answer_s"]
                for r, f_r in zip(runs[name], runs[floor], strict=True)
            )
            verdicts[name] = {
                "ratio_instructions": (
                    statistics.median(counts[name]) / statistics.median(counts[floor])
                    if counts
                    else None
                ),
                "ratio": ratio,
                "ratio_paired": paired,
                "ratio_in_process": s["total_s"]["median"] / f["total_s"]["median"],
                "ratio_cpu": ratio_cpu,
                "met": ratio <= TARGET,
            }
        rows.append(
            [
                name,
                s["total_s"]["n"],
                ms(s["startup_s"]["median"]),
                ms(s["imports_s"]["median"]),
                ms(s["init_s"]["median"]),
                ms(s["invoke_s"]["median"]),
                f"{ms(s['spawn_to_answer_s']['median'])} / {ms(s['spawn_to_answer_s']['p90'])}",
                ms(s["cpu_total_s"]["median"]),
                "" if ratio is None else f"{ratio:.2f}x / {ratio_cpu:.2f}x",
                "" if ratio is None else f"{verdicts[name]['ratio_paired']:.2f}x",
                "" if ratio is None else ("met" if ratio <= TARGET else "MISSED"),
            ]
        )
    reports = {
        "webhook": import_report(imports["webhook"], imports["webhook-floor"]),
        "delivery": import_report(imports["delivery"], imports["delivery-floor"]),
    }
    for name in ("webhook", "delivery"):
        bare = import_report(uncompiled[name], imports[f"{name}-floor"])
        reports[name]["no_bytecode_total_self_ms"] = bare["total_self_ms"]
        reports[name]["no_bytecode_relay_only_by_package_ms"] = bare["relay_only_by_package_ms"]
    out = write_result(
        args.out,
        {
            "benchmark": "cold_start",
            "rounds": rounds,
            "delivery_batch": args.delivery_batch,
            "target_ratio": TARGET,
            "summary": summary,
            "verdicts": verdicts,
            "importtime": reports,
            "instructions": counts,
            "trace_datagrams": trace_datagrams,
            "runs": runs,
        },
        python=interpreter,
    )
    print(f"## Cold start ({rounds} fresh processes each; medians in ms)\n")
    print(f"Children: Python {interpreter['version']} ({interpreter['executable']} -S)\n")
    headers = ["variant", "n", "startup", "imports", "init", "1st invoke"]
    headers += ["spawn→answer (median / p90)", "CPU to answer", "vs floor (wall / CPU)"]
    headers += ["paired rounds"]
    headers += [f"≤ {TARGET}x (wall)"]
    print(markdown_table(headers, rows))
    if counts:
        print(f"\n### Instructions to the first answer (callgrind, {counted} run(s) each)\n")
        table = []
        for name, (_, _, floor, _) in VARIANTS.items():
            ratio_i = verdicts[name]["ratio_instructions"] if floor is not None else None
            table.append(
                [
                    name,
                    f"{statistics.median(counts[name]) / 1e6:.0f}",
                    f"{(max(counts[name]) - min(counts[name])) / 1e6:.1f}",
                    "" if ratio_i is None else f"{ratio_i:.3f}x",
                ]
            )
        print(markdown_table(["variant", "M instructions", "spread (M)", "vs floor"], table))
    for name, report in reports.items():
        print(
            f"\n### `-X importtime`: {name} (self total {report['total_self_ms']:.0f} ms, ", end=""
        )
        print(
            f"floor {report['floor_total_self_ms']:.0f} ms; modules {report['modules']} vs ", end=""
        )
        print(f"{report['floor_modules']}; without bytecode: self total ", end="")
        print(f"{report['no_bytecode_total_self_ms']:.0f} ms)\n")
        top = [
            [r["module"], r["depth"], f"{r['cumulative_ms']:.1f}"] for r in report["top_cumulative"]
        ]
        print(markdown_table(["module", "depth", "cumulative ms"], top))
        extra = list(report["relay_only_by_package_ms"].items())[:8]
        print("\nImported by the relay only (self ms, by package): ", end="")
        print(", ".join(f"{package} {value:.0f}" for package, value in extra))
        bare = list(report["no_bytecode_relay_only_by_package_ms"].items())[:8]
        print("The same without bytecode: ", end="")
        print(", ".join(f"{package} {value:.0f}" for package, value in bare))
    print(f"\nX-Ray segments received from traced runs: {trace_datagrams}. Wrote {out}")


if __name__ == "__main__":
    main()
