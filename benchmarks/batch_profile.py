"""Where a batch's CPU goes: the delivery function's 100-message batch, every thread profiled.

    python -m benchmarks.profile batch    # mixed, 50 ms, DynamoDB stand-in at 5 ms, 5 batches

At 50 ms to both providers the 100-message cell needs more CPU than its concurrency bound allows
it time (docs/performance.md, 3): this says what that CPU is. cProfile inflates code that makes
many small calls (botocore's parameter validation showed 12 % here, yet turning it off saved
nothing measurable: results/ab/), so weigh a share by an A/B run before acting on it. CPython
3.11 only: from 3.12 one profiler may be active at a time. The delivery function runs here as
benchmarks.batch runs it (its stack, X-Ray on as deployed, DynamoDB answered by its stand-in,
benchmarks/_dynamodb.py) with a cProfile per thread (``threading.setprofile``: the lanes'
threads as they start, and the handler's own around each call), timed by the thread's CPU clock,
so a thread waiting on the provider costs nothing. Self time is summed per area (the package a
function's file is in); a C function's (``~``) goes to its callers, in proportion to the calls
each made. The first batch (40 messages, as benchmarks.batch warms up) is counted too: the
lanes' threads start in it. cProfile's own overhead is in every figure, so the shares, not the
milliseconds, are the result; benchmarks.batch measures the CPU without a profiler.
"""

from __future__ import annotations

import contextlib
import cProfile
import os
import pstats
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._dynamodb import DynamoDBProcess
from benchmarks._stack import markdown_table, write_result
from benchmarks.batch import (
    _DEVNULL,
    AwsCalls,
    Bench,
    delivery_queue_arn,
    relay_function,
    start_stack,
    trace_header,
)
from relay_local.lambda_runtime import LambdaContext

if TYPE_CHECKING:
    from collections.abc import Iterator

OUT = Path("benchmarks/results/profile_batch.json")
TEXT = OUT.with_suffix(".txt")
WARM = 40  # messages in the first batch, as benchmarks.batch warms its environments
# (path fragment, area), first match wins: where a function's file lies says whose work it is.
AREAS = (
    ("/relay/relay/", "relay (the layer's own code)"),
    ("/aws_lambda_powertools/utilities/idempotency/", "Powertools idempotency"),
    ("/aws_lambda_powertools/utilities/batch/", "Powertools batch"),
    ("/aws_lambda_powertools/logging/", "Powertools logger"),
    ("/aws_lambda_powertools/metrics/", "Powertools metrics"),
    ("/aws_lambda_powertools/tracing/", "Powertools tracer"),
    ("/aws_lambda_powertools/", "Powertools, other"),
    ("/aws_xray_sdk/", "X-Ray SDK"),
    ("/botocore/", "botocore"),
    ("/boto3/", "boto3"),
    ("/urllib3/", "urllib3"),
    ("/phonenumbers/", "phonenumbers"),
    ("/jmespath/", "jmespath"),
    ("/benchmarks/", "benchmark"),
    ("/relay_local/", "local runner"),
    ("/json/", "stdlib json"),
    ("/logging/", "stdlib logging"),
    ("/http/", "stdlib http.client"),
    ("/concurrent/", "stdlib concurrent.futures"),
    ("threading.py", "stdlib threading"),
    ("/email/", "stdlib email (http.client's headers)"),
)


class ThreadProfiles:
    """A cProfile per thread, started at each new thread's first call; merged on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._profiles: list[cProfile.Profile] = []

    def new(self) -> cProfile.Profile:
        profile = cProfile.Profile(time.thread_time)
        with self._lock:
            self._profiles.append(profile)
        return profile

    def follow_new_threads(self) -> None:
        def begin(*_: Any) -> None:
            sys.setprofile(None)
            self.new().enable()

        threading.setprofile(begin)

    @contextlib.contextmanager
    def this_thread(self, profile: cProfile.Profile) -> Iterator[None]:
        profile.enable()
        try:
            yield
        finally:
            profile.disable()

    def stats(self) -> pstats.Stats:
        threading.setprofile(None)
        with self._lock:
            profiles = [_Finished(p) for p in self._profiles if p.getstats()]
        return pstats.Stats(*profiles)  # type: ignore[arg-type]


class _Finished:
    """A profile's finished calls, for pstats.Stats: not ``create_stats``, whose ``disable`` from
    another thread would close the profiled thread's pending calls (a lane waiting for work) on
    this thread's CPU clock."""

    def __init__(self, profile: cProfile.Profile) -> None:
        profile.snapshot_stats()
        self.stats = profile.stats

    def create_stats(self) -> None:
        pass


def area(filename: str) -> str:
    path = filename.replace(os.sep, "/")
    found = next((name for fragment, name in AREAS if fragment in path), None)
    if found is not None:
        return found
    return "stdlib, other" if "/lib/python3" in path else f"other ({Path(path).name})"


def by_area(stats: pstats.Stats) -> Counter[str]:
    """Self time (s) per area; a C function's split among its callers by their call counts."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    seconds: Counter[str] = Counter()
    for (filename, _, _), (_, _, own, _, callers) in table.items():
        if filename != "~" or not callers:
            seconds[area(filename) if filename != "~" else "C, uncalled"] += own
            continue
        calls = sum(counts[1] for counts in callers.values()) or 1
        for (caller_file, _, _), counts in callers.items():
            seconds[area(caller_file) if caller_file != "~" else "C"] += own * counts[1] / calls
    return seconds


def profile_batch(messages: int, latency_ms: int, mix: str, batches: int) -> dict[str, Any]:
    if sys.version_info >= (3, 12):  # a second cProfile.enable() raises there
        raise SystemExit("benchmarks.profile batch needs CPython 3.11: one profiler per thread")
    import boto3

    load_before = os.getloadavg()
    profiles = ThreadProfiles()
    stack = start_stack(tracing=True)
    dynamodb: DynamoDBProcess | None = None
    try:
        dynamodb = DynamoDBProcess("127.0.0.1", 5.0)
        sqs = boto3.client("sqs")
        aws = AwsCalls()  # the benchmark's instrumentation stays, so the figures compare
        aws.attach()
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = dynamodb.url  # before the handler's clients
        profiles.follow_new_threads()  # before the handler loads: its lanes start later
        handler = relay_function()
        bench = Bench(stack, True, sqs, aws, {"relay": handler}, delivery_queue_arn(sqs, stack))
        main = profiles.new()
        sizes = [WARM] + [messages] * batches
        for size in sizes:
            event, handles = bench.event(bench.bodies(size, mix))
            stack.set_latency(latency_ms / 1000)
            stack.reset()
            os.environ["_X_AMZN_TRACE_ID"] = trace_header()
            context = LambdaContext(timeout_s=60.0, function_name="bench-relay")
            with contextlib.redirect_stdout(_DEVNULL), profiles.this_thread(main):
                answer = handler(event, context)
            if answer.get("batchItemFailures") or stack.received() != size:
                raise RuntimeError(f"a batch of {size} did not all deliver: {answer}")
            aws.take()
            bench._delete(handles)
    finally:
        if dynamodb is not None:
            dynamodb.stop()
        stack.stop()
    stats = profiles.stats()
    total = sum(sizes)
    areas = by_area(stats)
    cpu = sum(areas.values())
    TEXT.parent.mkdir(parents=True, exist_ok=True)
    with TEXT.open("w") as out:
        out.write(f"python -m benchmarks.profile batch: {total} messages, by own CPU time\n")
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(40)
    return {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cell": {"messages": messages, "latency_ms": latency_ms, "mix": mix},
        "batches": sizes,
        "dynamodb": "stand-in (benchmarks/_dynamodb.py, over HTTP): every call answered {} "
        "after 5 ms, concurrently",
        "tracing": True,
        "profiled_cpu_ms": round(cpu * 1000, 1),
        "profiled_cpu_ms_per_message": round(cpu * 1000 / total, 3),
        "areas_ms_per_message": {
            name: round(s * 1000 / total, 3) for name, s in areas.most_common()
        },
        "areas_share": {name: round(s / cpu, 4) for name, s in areas.most_common()},
        "calls_of_note": calls_of_note(stats, cpu, total),
    }


# Functions whose cumulative time says what a part of the work costs as a whole: (file, line,
# name) as cProfile keys them, in the pinned versions (a row that matches nothing is left out).
OF_NOTE = (
    ("botocore/client.py", None, "_make_api_call", "a DynamoDB call through botocore, all of it"),
    ("botocore/validate.py", 208, "validate", "botocore's parameter validation"),
    ("botocore/useragent.py", 412, "to_string", "botocore's User-Agent header, built each call"),
    ("botocore/serialize.py", 433, "serialize_to_request", "botocore's JSON serialisation"),
    ("relay/transport.py", None, "post", "the provider request (urllib3 and the relay's checks)"),
    ("aws_xray_sdk/core/recorder.py", 303, "begin_subsegment", "X-Ray: opening subsegments"),
    ("aws_xray_sdk/core/recorder.py", 342, "end_subsegment", "X-Ray: closing, sending them"),
)


def calls_of_note(stats: pstats.Stats, cpu: float, messages: int) -> list[dict[str, Any]]:
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    found = []
    for fragment, line, function, what in OF_NOTE:
        seconds = sum(
            row[3]
            for (filename, number, name), row in table.items()
            if name == function
            and line in (None, number)
            and filename.replace(os.sep, "/").endswith(fragment)
        )
        if seconds:
            found.append(
                {
                    "function": f"{fragment}:{function}",
                    "what": what,
                    "ms_per_message": round(seconds * 1000 / messages, 3),
                    "share": round(seconds / cpu, 4),
                }
            )
    return found


def run(messages: int = 100, latency_ms: int = 50, mix: str = "mixed", batches: int = 5) -> None:
    result = profile_batch(messages, latency_ms, mix, batches)
    out = write_result(OUT, result)
    rows = [
        [name, f"{ms:.3f}", f"{100 * result['areas_share'][name]:.1f} %"]
        for name, ms in result["areas_ms_per_message"].items()
    ]
    print(markdown_table(["area", "CPU ms a message (profiled)", "share"], rows))
    notes = [
        [f"`{n['function']}`", n["what"], f"{n['ms_per_message']:.3f}", f"{100 * n['share']:.1f} %"]
        for n in result["calls_of_note"]
    ]
    print(markdown_table(["function", "what", "CPU ms a message (cumulative)", "share"], notes))
    print(f"Wrote {out} and {TEXT}")
