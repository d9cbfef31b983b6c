"""Start `python -m relay_local` (what `make run` runs) for a test, on ports it picks itself.

Picking a free port here and handing it to another process races with everything else that
binds ports (the other xdist worker, moto, the sandboxes): the child binds port 0 instead and
reports what it got on its first line.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from relay_local.lambda_runtime import REPO


@dataclass
class LocalRelay:
    process: subprocess.Popen[str]
    url: str
    moto_port: int
    lines: queue.Queue[str]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start() -> LocalRelay:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LANCEPILOT", "FLUENTS"))
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay_local",
            "--port",
            "0",
            "--moto-port",
            "0",
            "--sandbox-ports",
            "0",
            "0",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    seen, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("READY "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            return LocalRelay(
                process, fields["relay"], int(fields["moto"].rsplit(":", 1)[1]), lines
            )
    process.kill()
    raise AssertionError("the local relay did not start:\n" + "".join(seen))
