"""webhook-relay's shared layer: the canonical message, validation, translation, delivery.

Nothing here knows about Lambda events; the handlers in ``functions/`` adapt events to it.
"""
