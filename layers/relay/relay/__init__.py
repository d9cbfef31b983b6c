"""webhook-relay's shared layer: the canonical message, validation, translation, delivery.

Nothing here knows about Lambda events; the handlers in ``functions/`` adapt events to it.
Value types are ``typing.NamedTuple``, not frozen dataclasses: defining a frozen dataclass runs
its generated methods through ``exec`` (about 3.5 M instructions each on CPython 3.11, against
0.6 M for a NamedTuple), and a handler defines eleven of them at cold start.
"""

import gc
import os

# A Lambda init (the handler's imports, then its module body) builds a few hundred thousand
# objects that live as long as the environment, and next to no garbage; yet the cyclic
# collector walks them again at every collection their allocation triggers: 35 young and 3
# older collections, 40 to 52 ms of each cold start on CPython 3.13 (docs/performance.md). In a
# Lambda environment (Lambda sets AWS_LAMBDA_INITIALIZATION_TYPE for every function) the
# collector is paused from the layer's first import until the handler's init calls
# ``init_done``. Anywhere else (tests, the local stack, tools) it is left alone.
_paused = "AWS_LAMBDA_INITIALIZATION_TYPE" in os.environ and gc.isenabled()
if _paused:
    gc.disable()


def init_done() -> None:
    """Call last in a handler's module body: the collector resumes, init's objects frozen.

    ``gc.freeze`` moves what init built to the permanent generation, which no collection walks
    again: the invocations that follow collect only their own objects. What init built is kept
    for the environment's life anyway (modules, clients, caches), so nothing is held back.
    """
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
