"""Warm overhead: messages per second and CPU per message through each handler, vs. the floor.

    python -m benchmarks.warm --quick        # 1 round of 100 messages per variant, ~1 minute
    python -m benchmarks.warm                # 3 rounds of 400 messages per variant

Each variant runs in its own process (the relay's Tracer patches botocore process-wide, so a
floor beside it would be traced too), warmed up first, then timed in-process: wall time with
``time.perf_counter`` and the handler process's CPU with ``time.process_time`` (all of its
threads). The webhook takes sequential requests, each with a fresh idempotency key; the delivery
function takes SQS events of 10 records (template.yaml's DeliveryBatchSize). Providers answer
at once (zero latency).

Both sides talk to the same moto_server and the same loopback providers, which dominate the
wall time. Two views keep that honest:

* wall ms per message, and its ratio: what a caller sees, backends included;
* CPU ms per message of the handler process: moto runs in its own process and the providers in
  this one, so their work is not in it; this is the relay's own cost against the floor's;
* relay - floor, per message: the backends are the same on both sides, so they cancel in the
  difference, with one exception: every key being fresh, both make a conditional PutItem before
  each send and write the outcome after it, the floors with an UpdateItem a message, the relay
  with a BatchWriteItem (relay.group_write): one item a call for the webhook, one message at a
  time; for delivery's events of 10 records, the completions that land together share a call.
  The relay reads no record before a send.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from collections import defaultdict
from typing import Any

from benchmarks._stack import (
    CALLGRIND,
    HANDLERS,
    TIMEOUTS,
    BenchStack,
    http_event,
    instructions_counted,
    markdown_table,
    message,
    run_child,
    sqs_event,
    summarize,
    write_result,
)

TARGET = 1.5  # relay time per message <= 1.5 x the floor's, in wall time and in CPU time
BATCH = 10  # records per SQS event: template.yaml's DeliveryBatchSize default
VARIANTS: dict[str, tuple[str, bool, str | None]] = {
    "webhook": ("webhook", True, "webhook-floor"),
    "webhook-floor": ("webhook-floor", False, None),
    "webhook, tracing off": ("webhook", False, "webhook-floor"),
    "delivery": ("delivery", True, "delivery-floor"),
    "delivery-floor": ("delivery-floor", False, None),
    "delivery, tracing off": ("delivery", False, "delivery-floor"),
}


def events(handler: str, messages: int, warmup_messages: int) -> tuple[list[dict[str, Any]], int]:
    """Warm-up events then timed ones; the number of warm-up events."""
    total = messages + warmup_messages
    if handler.startswith("webhook"):
        return [http_event(message(i)) for i in range(total)], warmup_messages
    batches = [
        sqs_event([message(start + n) for n in range(BATCH)]) for start in range(0, total, BATCH)
    ]
    return batches, warmup_messages // BATCH


def check(name: str, answers: dict[str, int], invocations: int) -> None:
    delivered = answers.get("status_201", 0) == invocations or (
        answers.get("batches", 0) == invocations and answers.get("batch_item_failures", 1) == 0
    )
    if not delivered:
        raise RuntimeError(f"{name}: not every message was delivered: {answers}")


def measure(
    stack: BenchStack, rounds: int, messages: int, warmup: int
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    names = list(VARIANTS)
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            handler, traced, _ = VARIANTS[name]
            batch, warm_events = events(handler, messages, warmup)
            result = run_child(
                HANDLERS[handler],
                stack.process_env(handler, tracing=traced),
                batch,
                warmup=warm_events,
                tracing=traced,
                timeout_s=TIMEOUTS[handler.removesuffix("-floor")],
            )
            check(name, result["answers"], len(batch))
            per = BATCH if handler.startswith("delivery") else 1
            timed = result["invocations"] * per
            runs[name].append(
                {
                    "messages": timed,
                    "wall_ms_per_message": result["wall_s"] / timed * 1000,
                    "cpu_ms_per_message": result["cpu_s"] / timed * 1000,
                    "messages_per_second": timed / result["wall_s"],
                    "invocation_ms_median": statistics.median(result["invocation_walls_s"]) * 1000,
                    "max_rss_kb": result["max_rss_kb"],
                }
            )
    return runs


def instructions_per_message(stack: BenchStack, few: int, many: int) -> dict[str, float]:
    """User-space instructions per message, under callgrind: two runs of each variant, ``few``
    and ``many`` messages, differenced, so start-up and warm-up cancel out. A count that other
    load does not move; it leaves out the kernel's work (sockets, writes), which CPU time has."""
    per_message: dict[str, float] = {}
    for name, (handler, traced, _) in VARIANTS.items():
        counts = []
        for messages in (few, many):
            batch, _ = events(handler, messages, 0)
            result = run_child(
                HANDLERS[handler],
                stack.process_env(handler, tracing=traced),
                batch,
                tracing=traced,
                timeout_s=TIMEOUTS[handler.removesuffix("-floor")],
                wrapper=CALLGRIND,
                limit_s=900.0,
            )
            check(name, result["answers"], len(batch))
            counts.append(instructions_counted(name, result))
        per_message[name] = (counts[1] - counts[0]) / (many - few)
    return per_message


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 100 messages")
    parser.add_argument("--rounds", type=int, help="processes per variant (default 3)")
    parser.add_argument("--messages", type=int, help="timed messages per process (default 400)")
    parser.add_argument(
        "--instructions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also count instructions per message under callgrind (about 5 minutes)",
    )
    parser.add_argument("--out", default="benchmarks/results/warm.json")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    messages = args.messages or (100 if args.quick else 400)
    messages -= messages % BATCH
    warmup = 20 if args.quick else 50

    with BenchStack(latency=0.0) as stack:
        runs = measure(stack, rounds, messages, warmup)
        counted = args.instructions and shutil.which("valgrind") is not None
        per_message = instructions_per_message(stack, 20, 120) if counted else {}

    keys = ("wall_ms_per_message", "cpu_ms_per_message", "messages_per_second")
    summary = {n: {k: summarize([r[k] for r in rs]) for k in keys} for n, rs in runs.items()}
    rows, verdicts = [], {}
    for name, (_, _, floor) in VARIANTS.items():
        s = summary[name]
        wall, cpu = s["wall_ms_per_message"]["median"], s["cpu_ms_per_message"]["median"]
        cells = [name, f"{s['messages_per_second']['median']:.0f}", f"{wall:.2f}", f"{cpu:.2f}"]
        if floor is None:
            rows.append([*cells, "", "", "", ""])
            continue
        floor_wall = summary[floor]["wall_ms_per_message"]["median"]
        floor_cpu = summary[floor]["cpu_ms_per_message"]["median"]
        verdicts[name] = {
            "wall_ratio": wall / floor_wall,
            "cpu_ratio": cpu / floor_cpu,
            "wall_overhead_ms": wall - floor_wall,
            "cpu_overhead_ms": cpu - floor_cpu,
            # Both: wall time is mostly the shared backends', CPU is the relay's own cost.
            "met": wall / floor_wall <= TARGET and cpu / floor_cpu <= TARGET,
        }
        v = verdicts[name]
        rows.append(
            [
                *cells,
                f"{v['wall_ratio']:.2f}x",
                f"{v['cpu_ratio']:.2f}x",
                f"{v['wall_overhead_ms']:+.2f} / {v['cpu_overhead_ms']:+.2f}",
                "met" if v["met"] else "MISSED",
            ]
        )
    out = write_result(
        args.out,
        {
            "benchmark": "warm",
            "rounds": rounds,
            "messages_per_process": messages,
            "warmup_messages": warmup,
            "delivery_batch": BATCH,
            "target_ratio": TARGET,
            "summary": summary,
            "verdicts": verdicts,
            "instructions_per_message": per_message,
            "runs": runs,
        },
    )
    print(f"## Warm ({rounds} process(es) per variant, {messages} timed messages each; medians)\n")
    headers = ["variant", "msg/s", "wall ms/msg", "CPU ms/msg", "wall vs floor", "CPU vs floor"]
    headers += ["relay - floor ms/msg (wall / CPU)", f"≤ {TARGET}x (wall and CPU)"]
    print(markdown_table(headers, rows))
    if per_message:
        print("\n### Instructions per message (callgrind, 120 less 20 messages)\n")
        table = []
        for name, (_, _, floor) in VARIANTS.items():
            ratio = "" if floor is None else f"{per_message[name] / per_message[floor]:.2f}x"
            table.append([name, f"{per_message[name] / 1e6:.2f}", ratio])
        print(markdown_table(["variant", "M instructions / message", "vs floor"], table))
    print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
