"""webhook-relay's shared layer: the canonical message, validation, translation, delivery.

Nothing here knows about Lambda events; the handlers in ``functions/`` adapt events to it.
Value types are ``typing.NamedTuple``, not frozen dataclasses: defining a frozen dataclass runs
its generated methods through ``exec`` (about 3.5 M instructions each on CPython 3.11, against
0.6 M for a NamedTuple), and a handler defines eleven of them at cold start.
"""
