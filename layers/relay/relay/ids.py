"""Identifiers: the relay's message ids, and the UUID check shared by config and validation."""

from __future__ import annotations

import uuid


def new_relay_id() -> str:
    """A fresh id for a message; callers quote it, logs carry it."""
    return str(uuid.uuid4())


def is_uuid(value: str) -> bool:
    """True for an 8-4-4-4-12 hex UUID (either case)."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
