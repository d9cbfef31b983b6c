"""Benchmarks of the relay against hand-written floors: ``python -m benchmarks.<name> --quick``."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# Sign AWS requests as Lambda's runtime does, in Python: botocore would use awscrt's C signer,
# which the dev venv has and the runtime does not, wherever a benchmark runs the relay in its
# own process (batch, profile batch). Read when botocore is first imported, so set here.
os.environ.setdefault("BOTO_DISABLE_CRT", "true")


def spawn(module: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``python -m benchmarks.<module> args`` in a process of its own, text I/O, run from the
    repository (benchmarks is a package): the stand-ins answer from their own interpreter."""
    return subprocess.Popen(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=Path(__file__).resolve().parents[1],
        text=True,
        **popen,
    )
