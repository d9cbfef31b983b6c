"""``make run`` shows each EMF metric line as one readable line instead of raw JSON."""

from __future__ import annotations

import io
import json
import threading
from typing import TextIO


def render(line: str) -> str:
    """``  metric  MessagesDelivered=1 Count, DeliveryLatency=12.3 ms  [Provider=fluents]``."""
    if '"_aws"' not in line:
        return line
    try:
        blob = json.loads(line)
        directive = blob["_aws"]["CloudWatchMetrics"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return line
    units = {"Count": "", "Milliseconds": " ms"}
    values = []
    for metric in directive["Metrics"]:
        value = blob[metric["Name"]]
        shown = ", ".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"
        values.append(f"{metric['Name']}={shown}{units.get(metric['Unit'], ' ' + metric['Unit'])}")
    sets = [" ".join(f"{name}={blob[name]}" for name in names) for names in directive["Dimensions"]]
    return f"  metric  {'  '.join(values)}  [{' | '.join(sets)}]"


class ReadableMetrics(io.TextIOBase):
    """A stdout that renders EMF lines; everything else passes through unchanged."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._target.write(render(line) + "\n")
            self._target.flush()
        return len(text)

    def flush(self) -> None:
        self._target.flush()
