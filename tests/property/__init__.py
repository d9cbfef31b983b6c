"""Property tests: hostile input against the layer and both handlers (docs/hostile-input.md).

Each test is bounded to run in a few seconds. ``RELAY_HYPOTHESIS_SCALE`` multiplies every
example count, e.g. ``RELAY_HYPOTHESIS_SCALE=25`` for a long bug hunt.

No example database: a run is the seed's alone (``--hypothesis-seed=7`` reproduces it), never
replays of what an earlier run saved in .hypothesis/. Loaded here, before any test module
builds its settings (they inherit it), on top of whatever profile is active.
"""

from __future__ import annotations

import os

from hypothesis import settings

SCALE = float(os.environ.get("RELAY_HYPOTHESIS_SCALE", "1"))

settings.register_profile("webhook-relay", parent=settings.default, database=None)
settings.load_profile("webhook-relay")


def examples(count: int) -> int:
    """``count`` examples, scaled by RELAY_HYPOTHESIS_SCALE."""
    return max(1, round(count * SCALE))
