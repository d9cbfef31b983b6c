"""Both provider sandboxes in a process of their own, driven over its stdin and stdout.

    python -m benchmarks._providers <host> <latency s>     (see ProviderProcess)

The sandboxes check every request against the providers' OpenAPI documents, which costs CPU.
Run as threads in the benchmark's process, that CPU and the handler under test would share one
GIL: a batch's time would include the providers' work, which on Lambda runs elsewhere. Here they
answer from their own interpreter, as the real providers do from their own machines.

Protocol: the first line out is ``{"base_urls": {provider: url}}``; then one JSON command a line
in (``{"op": "latency", "seconds": s}``, ``{"op": "reset"}``, ``{"op": "stats"}``), one JSON
answer a line out. ``stats`` gives each provider's peak in flight, its 2xx answers and when each
request arrived (``time.monotonic()``, the system-wide clock the parent reads too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import IO, Any, TypedDict

from benchmarks import spawn


class Stats(TypedDict):
    peak_in_flight: int
    accepted: int
    arrivals: list[float]


def serve(host: str, latency: float) -> None:
    from relay_local.sandbox import ProviderSandbox
    from relay_local.stack import DEV_TOKENS

    sandboxes = {
        provider: ProviderSandbox(provider, token=DEV_TOKENS[provider], host=host, latency=latency)
        for provider in ("lancepilot", "fluents")
    }
    for sandbox in sandboxes.values():
        sandbox.start()
    _say(sys.stdout, {"base_urls": {name: s.base_url for name, s in sandboxes.items()}})
    for line in sys.stdin:  # until the parent closes stdin
        command = json.loads(line)
        answer: Any = None
        if command["op"] == "latency":
            for sandbox in sandboxes.values():
                sandbox.latency = float(command["seconds"])
        elif command["op"] == "reset":
            for sandbox in sandboxes.values():
                sandbox.reset()
        elif command["op"] == "stats":
            answer = {
                name: Stats(
                    peak_in_flight=s.peak_in_flight,
                    accepted=len(s.accepted()),
                    arrivals=[r.at for r in s.received],
                )
                for name, s in sandboxes.items()
            }
        else:
            answer = {"error": f"unknown op {command['op']!r}"}
        _say(sys.stdout, answer)
    for sandbox in sandboxes.values():
        sandbox.stop()


def _say(out: IO[str], answer: Any) -> None:
    out.write(json.dumps(answer) + "\n")
    out.flush()


class ProviderProcess:
    """The parent's side: start the process, ask it, stop it."""

    def __init__(self, host: str, latency: float) -> None:
        self._process = spawn(
            "_providers", host, str(latency), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.base_urls: dict[str, str] = self._read()["base_urls"]

    @property
    def pid(self) -> int:
        return self._process.pid

    def ask(self, op: str, **arguments: Any) -> Any:
        assert self._process.stdin is not None
        _say(self._process.stdin, {"op": op, **arguments})
        answer = self._read()
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def stats(self) -> dict[str, Stats]:
        stats: dict[str, Stats] = self.ask("stats")
        return stats

    def stop(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _read(self) -> Any:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the providers' process ended (exit {self._process.poll()})")
        return json.loads(line)


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
