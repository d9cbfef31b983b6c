"""Build: the size of what `sam build` makes (the layer, each function) and what makes it up.

    python -m benchmarks.build                 # sam build into a scratch dir, then measure
    python -m benchmarks.build --build-dir .aws-sam/build   # measure an existing build

Sizes are on disk (unzipped, Lambda's 250 MB limit counts these) and deflated as a zip
(what is uploaded). The layer is broken down by top-level package; the target is that it holds
nothing the Lambda runtime already has (boto3, botocore, s3transfer), and of Powertools only what
the relay can import: the build prunes the rest (layers/relay/prune.py; LAYER_PRUNE=0 does not).
What was pruned is read from the build itself: the files Powertools' RECORD lists that the layer
lacks.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks._stack import REPO, markdown_table, write_result

IN_RUNTIME = ("boto3", "botocore", "s3transfer")  # python3.13's runtime ships these
ARTIFACTS = ("RelayLayer", "WebhookFunction", "DeliveryFunction")


def sam_build(into: Path) -> None:
    sam = Path(sys.executable).parent / "sam"
    # As make build does it: the layer with its python3.13 bytecode, or no build.
    env = {
        **os.environ,
        "SAM_CLI_TELEMETRY": "0",
        "PYTHON": sys.executable,
        "LAYER_BYTECODE": "required",
    }
    subprocess.run(
        [str(sam), "build", "--build-dir", str(into), "--cache-dir", str(into.parent / "cache")],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )


def files(root: Path) -> list[Path]:
    """Every file the artifact ships, its bytecode (__pycache__) included."""
    return [p for p in root.rglob("*") if p.is_file()]


def bytecode(root: Path) -> list[Path]:
    return [p for p in files(root) if "__pycache__" in p.parts]


def zipped_bytes(root: Path, bytecode: bool = True) -> int:
    """The artifact deflated as a zip; ``bytecode`` False: as a build without it would be."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files(root):
            if bytecode or "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(root))
    return buffer.tell()


def breakdown(site: Path) -> dict[str, int]:
    """Bytes per top-level package; every *.dist-info together as "(package metadata)"."""
    sizes: dict[str, int] = defaultdict(int)
    for path in files(site):
        top = path.relative_to(site).parts[0]
        name = "(package metadata)" if top.endswith(".dist-info") else top.removesuffix(".py")
        sizes[name] += path.stat().st_size
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def powertools(site: Path) -> dict[str, int]:
    """Bytes per Powertools subpackage (utilities.* and event_handler.* one level deeper): half
    the layer, of which the handlers import only a few parts."""
    root = site / "aws_lambda_powertools"
    sizes: dict[str, int] = defaultdict(int)
    for path in files(root):
        parts = [p for p in path.relative_to(root).parts[:-1] if p != "__pycache__"]
        depth = 2 if parts[:1] in (["utilities"], ["event_handler"]) else 1
        sizes[".".join(parts[:depth]) or "(top level)"] += path.stat().st_size
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def pruned(site: Path) -> dict[str, Any]:
    """Powertools as its wheel installed it (RECORD: sources, no bytecode) against what ships;
    each directory (or file) the prune removed with its source bytes."""
    record = next(site.glob("aws_lambda_powertools-*.dist-info")) / "RECORD"
    installed = {
        path: int(size)
        for path, _, size in csv.reader(record.read_text().splitlines())
        if path.startswith("aws_lambda_powertools/") and size
    }
    removed: dict[str, int] = defaultdict(int)
    for path, size in installed.items():
        parts = Path(path).parts
        gone = next(
            (d for d in range(2, len(parts) + 1) if not site.joinpath(*parts[:d]).exists()), 0
        )
        if gone:  # the topmost missing directory (or the file itself) names what was pruned
            removed[".".join(parts[1:gone]).removesuffix(".py")] += size
    root = site / "aws_lambda_powertools"
    shipped = files(root)
    return {
        "installed_source_bytes": sum(installed.values()),
        "shipped_source_bytes": sum(
            p.stat().st_size for p in shipped if "__pycache__" not in p.parts
        ),
        "shipped_bytes": sum(p.stat().st_size for p in shipped),
        "shipped_zipped_bytes": zipped_bytes(root),
        "pruned_source_bytes": sum(removed.values()),
        "pruned": dict(sorted(removed.items(), key=lambda item: -item[1])),
    }


def measure(build: Path) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Each artifact's files, bytes and zipped bytes; the layer's bytes per package."""
    artifacts = {}
    for name in ARTIFACTS:
        root = build / name
        artifacts[name] = {
            "files": len(files(root)),
            "bytes": sum(p.stat().st_size for p in files(root)),
            "zipped_bytes": zipped_bytes(root),
            "bytecode_files": len(bytecode(root)),
            "bytecode_bytes": sum(p.stat().st_size for p in bytecode(root)),
            # What LAYER_BYTECODE=0 would ship: the same files, less the bytecode.
            "zipped_bytes_without_bytecode": zipped_bytes(root, bytecode=False),
        }
    return artifacts, breakdown(build / "RelayLayer" / "python")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build-dir", type=Path, help="measure this build instead of building")
    parser.add_argument("--out", default="benchmarks/results/build.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        build = args.build_dir
        if build is None:
            build = Path(scratch) / "build"
            sam_build(build)
        artifacts, layer = measure(build)
        powertools_parts = powertools(build / "RelayLayer" / "python")  # before scratch goes
        powertools_pruned = pruned(build / "RelayLayer" / "python")
    if not artifacts["RelayLayer"]["bytecode_files"]:
        raise SystemExit("the layer was built without its bytecode: nothing written")
    runtime = [p for p in IN_RUNTIME if p in layer]
    out = write_result(
        args.out,
        {
            "benchmark": "build",
            "artifacts": artifacts,
            "layer_packages": layer,
            "powertools_packages": powertools_parts,
            "powertools_pruned": powertools_pruned,
            "runtime_packages_in_layer": runtime,
        },
    )

    kb = 1024
    print("## sam build artifacts\n")
    print(
        markdown_table(
            [
                "artifact",
                "files",
                "unzipped (KB)",
                "zipped (KB)",
                "of which bytecode (files / KB)",
                "zipped without bytecode (KB)",
            ],
            [
                [
                    name,
                    a["files"],
                    f"{a['bytes'] / kb:,.0f}",
                    f"{a['zipped_bytes'] / kb:,.0f}",
                    f"{a['bytecode_files']} / {a['bytecode_bytes'] / kb:,.0f}",
                    f"{a['zipped_bytes_without_bytecode'] / kb:,.0f}",
                ]
                for name, a in artifacts.items()
            ],
        )
    )
    print("\n## What the layer holds (unzipped)\n")
    print(
        markdown_table(
            ["package", "KB"], [[name, f"{size / kb:,.0f}"] for name, size in layer.items()]
        )
    )
    pt = powertools_pruned
    print("\n## Powertools after pruning\n")
    print(
        markdown_table(
            ["Powertools", "KB"],
            [
                ["as installed (sources, RECORD)", f"{pt['installed_source_bytes'] / kb:,.0f}"],
                ["pruned (sources)", f"{pt['pruned_source_bytes'] / kb:,.0f}"],
                ["shipped (sources)", f"{pt['shipped_source_bytes'] / kb:,.0f}"],
                ["shipped, with bytecode (unzipped)", f"{pt['shipped_bytes'] / kb:,.0f}"],
                ["shipped, with bytecode (zipped)", f"{pt['shipped_zipped_bytes'] / kb:,.0f}"],
            ],
        )
    )
    if pt["pruned"]:
        print(
            "\nPruned (sources): "
            + ", ".join(f"{n} {s / kb:,.0f}" for n, s in pt["pruned"].items())
        )
    else:
        print("\nNothing pruned: Powertools ships whole (LAYER_PRUNE=0?)")
    print("\n## Powertools, by subpackage (unzipped, top 12)\n")
    parts = list(powertools_parts.items())[:12]
    print(markdown_table(["subpackage", "KB"], [[n, f"{s / kb:,.0f}"] for n, s in parts]))
    print(f"\nPackages the runtime already has, found in the layer: {runtime or 'none'}")
    print(f"\nWrote {out}")
    if runtime:
        raise SystemExit("the layer ships what the Lambda runtime already has")


if __name__ == "__main__":
    main()
