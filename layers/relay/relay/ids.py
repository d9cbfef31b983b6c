"""Identifiers: the relay's message ids, and the UUID check shared by config and validation."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

# The namespace of keyed relay ids, an arbitrary constant. Never change it, nor how the name is
# built: a retry that spans the deploy would get another id, and a message queued twice would
# be sent twice.
KEYED_IDS = uuid.UUID("6f1d7c1e-0b4a-5e2f-9c83-4d2a61b7e905")


def new_relay_id() -> str:
    """A fresh id for a message sent without an idempotency key; callers quote it, logs carry it."""
    return str(uuid.uuid4())


def keyed_relay_id(scope: str, key: str, payload: Mapping[str, Any]) -> str:
    """The id of a message sent under a caller's key: a UUID (version 5) named by the key, in the
    key space ``scope`` of its idempotency record, and a hash of the message as that record holds
    it. A retry of the same message under the same key gets the same id even when its record is
    gone, so the delivery function (which sends a queued message once per id) sends it once; a
    key reused for another message, once its record has expired, gets another id.
    """
    # Sorted and ASCII-escaped: the same payload always gives the same bytes, whatever it holds.
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    return str(uuid.uuid5(KEYED_IDS, json.dumps([scope, key, digest])))


# What a RelayId attribute may hold to be used as one: the relay's own (UUIDs, SQS message ids)
# and anything as plain. A producer can set any text there, and the id goes into logs, dead
# letters and the X-Relay-Id header; anything else is ignored for the SQS message id.
_RELAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def queued_relay_id(attribute: str | None, message_id: str) -> str:
    """The relay id of a queued message: its ``RelayId`` attribute if it is a plain id (the
    webhook's, or kept through a redrive), else its SQS message id."""
    if attribute is not None and _RELAY_ID.fullmatch(attribute):
        return attribute
    return message_id


def is_uuid(value: str) -> bool:
    """True for an 8-4-4-4-12 hex UUID (either case)."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
