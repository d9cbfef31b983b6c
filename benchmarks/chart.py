"""Chart of the batch benchmark: batch time against batch size, one panel per provider latency.

    .venv/bin/python -m benchmarks.chart    # reads benchmarks/results/batch.json

Writes docs/performance-batch.png. Needs matplotlib (the ``bench`` extra); renders headless.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib as mpl

mpl.use("Agg")  # no display: CI and servers
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

if TYPE_CHECKING:
    from matplotlib.axes import Axes

IN = Path("benchmarks/results/batch.json")
OUT = Path("docs/performance-batch.png")
WIDTH_PX, HEIGHT_PX, DPI = 900, 420, 100  # readable at 900 px: the docs' column width
RELAY, SEQUENTIAL, BOUND, BARE = "#1f6fb4", "#d0632b", "#7a7a7a", "#2e8b57"


def draw(result: dict[str, Any], out: Path) -> Path:
    cells = result["cells"]
    meta = result["meta"]
    latencies = sorted({c["latency_ms"] for c in cells})
    fig, axes = plt.subplots(
        1,
        len(latencies),
        figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI),
        dpi=DPI,
        sharey=True,
        squeeze=False,
    )
    for ax, latency in zip(axes[0], latencies, strict=True):
        _panel(ax, [c for c in cells if c["latency_ms"] == latency], latency)
    axes[0][0].set_ylabel("batch time (log scale)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    # Three columns; the bare sender's lines (results since it was added) take a third row.
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=9)
    bottom = 0.13 if len(handles) <= 6 else 0.18
    runs = "run" if meta["reps"] == 1 else "runs"
    fig.suptitle(
        f"SQS batch: relay vs sequential BatchProcessor (median of {meta['reps']} {runs}, "
        f"at most {meta['provider_concurrency']} sends in flight per provider)",
        fontsize=11,
    )
    # Where and when: local timings depend on the machine and what else ran on it.
    load = meta.get("load_average_before", ["?"])[0]
    fig.text(
        0.5,
        0.915,
        f"{_machine(meta.get('machine'))}, {_dynamodb(meta)}, {meta.get('date', '')[:10]}, "
        f"load average {load} at the start",
        ha="center",
        fontsize=8,
        color=BOUND,
    )
    fig.tight_layout(rect=(0, bottom, 1, 0.92))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _panel(ax: Axes, cells: list[dict[str, Any]], latency: int) -> None:
    def series(mix: str, key: str) -> tuple[list[int], list[float]]:
        points = sorted(
            (c["size"], c[key]) for c in cells if c["mix"] == mix and c.get(key) is not None
        )
        return [p[0] for p in points], [p[1] for p in points]

    mixes = sorted({c["mix"] for c in cells}, key=lambda m: m != "single")
    for mix in mixes:
        dashed = "--" if mix == "mixed" else "-"
        sizes, ms = series(mix, "sequential_ms")
        if sizes and mix == "single":  # sequential time does not depend on the provider mix
            ax.plot(sizes, ms, "s-", color=SEQUENTIAL, label="sequential BatchProcessor")
        sizes, ms = series(mix, "relay_ms")
        if sizes:
            label = "relay, one provider" if mix == "single" else "relay, both providers"
            marker = "o" if mix == "single" else "^"
            ax.plot(sizes, ms, marker + dashed, color=RELAY, label=label)
            if mix == "single":
                for cell in cells:
                    if cell["mix"] == mix and cell.get("speedup") and cell["size"] > 1:
                        # The speed-up, halfway (on the log scale) between the two patterns.
                        middle = (cell["relay_ms"] * cell["sequential_ms"]) ** 0.5
                        ax.annotate(
                            f"{cell['speedup']:g}x faster",
                            (cell["size"], middle),
                            textcoords="offset points",
                            xytext=(-5, 0),
                            ha="right",
                            va="center",
                            fontsize=8,
                        )
    for mix in mixes:  # the bare sender: what the stand-ins and HTTP allow at the same limit
        sizes, ms = series(mix, "bare_ms")  # absent from results written before it was added
        if sizes:
            ax.plot(
                sizes,
                ms,
                linestyle="--" if mix == "single" else "-.",
                linewidth=0.9,
                color=BARE,
                label="bare sender, " + ("one provider" if mix == "single" else "both providers"),
            )
    if latency:
        for mix in mixes:  # both providers share the messages: each has half, its own limit
            bound = sorted((c["size"], c["bound_ms"]) for c in cells if c["mix"] == mix)
            ax.plot(
                [b[0] for b in bound],
                [b[1] for b in bound],
                linestyle=":" if mix == "single" else (0, (1, 4)),
                color=BOUND,
                label="concurrency bound, "
                + ("one provider" if mix == "single" else "both providers"),
            )
    ax.set_title(f"provider latency {latency} ms", fontsize=10)
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({c["size"] for c in cells})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.yaxis.set_major_formatter(FuncFormatter(_duration))
    ax.set_xlabel("messages in the batch")
    ax.grid(True, which="major", alpha=0.3)


def _machine(machine: dict[str, Any] | str | None) -> str:
    if not isinstance(machine, dict):  # results written before the machine was recorded
        return machine or ""
    return f"{machine['system']}, {machine['cpu']}, {machine['cpus']} cores"


def _dynamodb(meta: dict[str, Any]) -> str:
    """What answered the relay's DynamoDB calls: moto_server, the stand-in or an older stub."""
    if meta.get("dynamodb", "moto_server") == "moto_server":
        return "moto_server for AWS"
    ms = meta.get("dynamodb_ms")
    what = "DynamoDB stand-in" if meta.get("dynamodb_over_http") else "DynamoDB stubbed"
    return what + (f" at {ms:g} ms" if ms is not None else "")


def _duration(ms: float, _position: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--in", dest="source", type=Path, default=IN)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    written = draw(json.loads(args.source.read_text()), args.out)
    print(f"written: {written}")


if __name__ == "__main__":
    main()
