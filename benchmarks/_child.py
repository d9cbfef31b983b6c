"""One handler process for the benchmarks: run as a script, never imported.

    python benchmarks/_child.py <result fd> <spec.json>      (see _stack.run_child)

The clock starts on the first line; until the handler is loaded only what the interpreter has
already imported at startup is used (plus json, which every handler imports anyway), so the
handler's imports are measured, not pre-paid. The result is one JSON line on <result fd>; the
handler's own stdout (logs, EMF metrics) goes wherever the parent pointed it.
"""

import time

T0 = time.perf_counter()
CPU0 = time.process_time()  # CPU since the process started: the interpreter's startup

import importlib.util  # noqa: E402 - after the clock starts, on purpose
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402


class Context:
    """The Lambda context attributes the handlers and Powertools read."""

    def __init__(self, timeout_s: float, number: int) -> None:
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "bench")
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"))
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"
        )
        self.aws_request_id = f"00000000-0000-4000-8000-{number:012d}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "bench"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def trace_header() -> str:
    # What Lambda sets before each invocation under Tracing: Active (sampled).
    return (
        f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()};"
        f"Parent={os.urandom(8).hex()};Sampled=1"
    )


def load(path: str) -> Any:
    # Lambda's bootstrap imports the handler file as a top-level module ("app").
    spec = importlib.util.spec_from_file_location("app", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module
    spec.loader.exec_module(module)
    return module


def invoke(module: Any, event: Any, number: int, spec: dict[str, Any]) -> Any:
    if spec["tracing"]:
        os.environ["_X_AMZN_TRACE_ID"] = trace_header()
    return module.lambda_handler(event, Context(spec["timeout_s"], number))


def verdict(answer: Any) -> dict[str, int]:
    """What came back: HTTP statuses, or the records an SQS batch handed back."""
    if isinstance(answer, dict) and "statusCode" in answer:
        return {f"status_{answer['statusCode']}": 1}
    failures = (answer or {}).get("batchItemFailures", []) if isinstance(answer, dict) else []
    return {"batch_item_failures": len(failures), "batches": 1}


def merge(total: dict[str, int], more: dict[str, int]) -> None:
    for name, count in more.items():
        total[name] = total.get(name, 0) + count


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def cold(spec: dict[str, Any]) -> dict[str, Any]:
    # CPU time as well as wall time: it hardly moves with other load on the machine.
    started, cpu_started = time.perf_counter(), time.process_time()
    # The handler's own top-level import statements, in its order, before the handler.
    exec(compile(spec["prelude"], "<imports>", "exec"), {})
    imported, cpu_imported = time.perf_counter(), time.process_time()
    module = load(spec["handler"])  # now only the module body runs: init
    initialized, cpu_initialized = time.perf_counter(), time.process_time()
    answer = invoke(module, spec["events"][0], 0, spec)
    answered, cpu_answered = time.perf_counter(), time.process_time()
    return {
        "cpu_startup_s": CPU0,
        "cpu_imports_s": cpu_imported - cpu_started,
        "cpu_init_s": cpu_initialized - cpu_imported,
        "cpu_invoke_s": cpu_answered - cpu_initialized,
        "cpu_total_s": cpu_answered,
        "t0": T0,
        "answered_at": answered,
        "runner_s": started - T0,
        "imports_s": imported - started,
        "init_s": initialized - imported,
        "invoke_s": answered - initialized,
        "total_s": answered - T0,
        "answers": verdict(answer),
        "max_rss_kb": max_rss_kb(),
        "modules": len(sys.modules),
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    module = load(spec["handler"])
    rss_loaded = max_rss_kb()
    events, warmup = spec["events"], spec["warmup"]
    answers: dict[str, int] = {}
    for number, event in enumerate(events[:warmup]):
        merge(answers, verdict(invoke(module, event, number, spec)))
    walls: list[float] = []
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for number, event in enumerate(events[warmup:], start=warmup):
        began = time.perf_counter()
        merge(answers, verdict(invoke(module, event, number, spec)))
        walls.append(time.perf_counter() - began)
    wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    return {
        "invocations": len(events) - warmup,
        "wall_s": wall,
        "cpu_s": cpu,
        "invocation_walls_s": walls,
        "answers": answers,
        "max_rss_kb_loaded": rss_loaded,
        "max_rss_kb": max_rss_kb(),
        "modules": len(sys.modules),
    }


def main() -> None:
    fd = int(sys.argv[1])
    with open(sys.argv[2]) as spec_file:
        spec = json.load(spec_file)
    result = cold(spec) if spec["mode"] == "cold" else run(spec)
    os.write(fd, json.dumps(result).encode() + b"\n")
    os.close(fd)
    # No interpreter teardown: under valgrind the count then stops at the answer, as a Lambda
    # environment that is frozen, not torn down, after answering.
    sys.stdout.flush()
    os._exit(0)


main()
