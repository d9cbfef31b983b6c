"""Property tests: hostile input against the layer and both handlers (docs/hostile-input.md).

Each test is bounded to run in a few seconds. ``RELAY_HYPOTHESIS_SCALE`` multiplies every
example count, e.g. ``RELAY_HYPOTHESIS_SCALE=25`` for a long bug hunt.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("RELAY_HYPOTHESIS_SCALE", "1"))


def examples(count: int) -> int:
    """``count`` examples, scaled by RELAY_HYPOTHESIS_SCALE."""
    return max(1, round(count * SCALE))
