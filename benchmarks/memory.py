"""Memory: peak RSS of each handler process at batch 100, against 128 MB and the floor.

    python -m benchmarks.memory --quick      # 1 fresh process per variant
    python -m benchmarks.memory              # 3 fresh processes per variant (median)

A fresh process per variant loads its handler, then the delivery function takes one SQS event
of 100 records (50 per provider) and the webhook takes 100 sequential requests, the providers
answering after 200 ms (so that the batch can reach its limit at each provider); the peak is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end (and after loading, for the baseline).
The most requests each provider stand-in answered at once is counted too (``peak_in_flight``,
counted in the stand-ins' own process): it says how many sends the peak was taken with.
Children are forked by a shell so that ru_maxrss is their own (see _stack.LAUNCH).

On Lambda, "Max Memory Used" also counts the runtime's own client code in the same process
(a few MB); this measures the handler with a minimal stand-in for it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from benchmarks._stack import (
    HANDLERS,
    TIMEOUTS,
    BenchStack,
    http_event,
    markdown_table,
    message,
    run_child,
    sqs_event,
    summarize,
    write_result,
)

LATENCY = 0.2  # seconds before a provider answers

TARGET_MB = 100.0
LAMBDA_MB = 128.0
BATCH = 100
VARIANTS: dict[str, tuple[str, bool, str | None]] = {
    "webhook": ("webhook", True, "webhook-floor"),
    "webhook-floor": ("webhook-floor", False, None),
    "webhook, tracing off": ("webhook", False, "webhook-floor"),
    "delivery": ("delivery", True, "delivery-floor"),
    "delivery-floor": ("delivery-floor", False, None),
    "delivery, tracing off": ("delivery", False, "delivery-floor"),
}


def workload(handler: str) -> list[dict[str, Any]]:
    if handler.startswith("webhook"):
        return [http_event(message(i)) for i in range(BATCH)]
    return [sqs_event([message(i) for i in range(BATCH)])]


def check(name: str, answers: dict[str, int]) -> None:
    if not (
        answers.get("status_201") == BATCH
        or (answers.get("batches") == 1 and answers.get("batch_item_failures") == 0)
    ):
        raise RuntimeError(f"{name}: not every message was delivered: {answers}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 process per variant")
    parser.add_argument("--rounds", type=int, help="processes per variant (default 3)")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)

    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    # Providers answer after 200 ms, so the delivery batch reaches its limit (10 sends per
    # provider: at 50 ms some processes peaked at 5 to 8), not the two or three a 0 ms answer
    # allows; peak_in_flight says what it reached.
    with BenchStack(latency=LATENCY) as stack:
        names = list(VARIANTS)
        for round_number in range(rounds):
            for name in names if round_number % 2 == 0 else names[::-1]:
                handler, traced, _ = VARIANTS[name]
                stack.reset()  # the stand-ins' peak in flight, from this child on
                result = run_child(
                    HANDLERS[handler],
                    stack.process_env(handler, tracing=traced),
                    workload(handler),
                    tracing=traced,
                    timeout_s=TIMEOUTS[handler.removesuffix("-floor")],
                )
                check(name, result["answers"])
                runs[name].append(
                    {
                        "loaded_mb": result["max_rss_kb_loaded"] / 1024,
                        "peak_mb": result["max_rss_kb"] / 1024,
                        "modules": result["modules"],
                        "peak_in_flight": stack.peak_in_flight(),
                    }
                )

    summary: dict[str, dict[str, Any]] = {
        name: {k: summarize([r[k] for r in rs]) for k in ("loaded_mb", "peak_mb")}
        for name, rs in runs.items()
    }
    for name, rs in runs.items():  # the fewest any process reached: what every peak had
        summary[name]["peak_in_flight"] = {
            provider: min(r["peak_in_flight"][provider] for r in rs)
            for provider in rs[0]["peak_in_flight"]
        }
    rows, verdicts = [], {}
    for name, (_, _, floor) in VARIANTS.items():
        peak = summary[name]["peak_mb"]["median"]
        loaded = summary[name]["loaded_mb"]["median"]
        flight = ", ".join(
            f"{provider[:1].upper()} {n}" for provider, n in summary[name]["peak_in_flight"].items()
        )
        cells = [name, f"{loaded:.1f}", f"{peak:.1f}", f"{peak / LAMBDA_MB:.0%}", flight]
        if floor is None:
            rows.append([*cells, "", "ok" if peak < TARGET_MB else "OVER"])
            continue
        floor_peak = summary[floor]["peak_mb"]["median"]
        verdicts[name] = {
            "peak_mb": peak,
            "vs_floor": peak / floor_peak,
            "over_floor_mb": peak - floor_peak,
            "met": peak < TARGET_MB,
            "peak_in_flight": summary[name]["peak_in_flight"],
        }
        rows.append(
            [
                *cells,
                f"{peak / floor_peak:.2f}x (+{peak - floor_peak:.1f} MB)",
                "met" if peak < TARGET_MB else "MISSED",
            ]
        )
    out = write_result(
        args.out,
        {
            "benchmark": "memory",
            "rounds": rounds,
            "batch": BATCH,
            "target_mb": TARGET_MB,
            "lambda_mb": LAMBDA_MB,
            "summary": summary,
            "verdicts": verdicts,
            "runs": runs,
        },
    )
    print(f"## Peak RSS at batch {BATCH} ({rounds} fresh process(es) each; medians, MB)\n")
    headers = [
        "variant",
        "after load",
        "peak",
        "of 128 MB",
        "in flight (fewest of the runs' peaks)",
        "vs floor",
        f"< {TARGET_MB:.0f} MB",
    ]
    print(markdown_table(headers, rows))
    print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
