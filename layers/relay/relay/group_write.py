"""Group commit for DynamoDB puts: threads that write at once share one BatchWriteItem.

A batch's sends finish in waves (one per provider latency); each then marks its idempotency
record COMPLETED. One UpdateItem a message was half the relay's DynamoDB calls and a third of a
100-message batch's CPU (docs/performance.md). Here the first writer writes at once; whoever
arrives while that write is in flight waits and goes in the next group, written by the first of
them. Nobody returns before their own item is written, so a crash loses no more than it did.
"""

from __future__ import annotations

import random
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

# BatchWriteItem's limit of requests per call.
MAX_GROUP = 25
# Attempts at the items DynamoDB hands back unprocessed (throttled), with jittered backoff: the
# same budget botocore gives a throttled call under FAST_FAIL, then the writers are told.
UNPROCESSED_ATTEMPTS = 3
_BACKOFF_SECONDS = 0.025


class NotWritten(Exception):
    """The item was not written: the call failed, or DynamoDB left it unprocessed."""


class _Entry:
    __slots__ = ("error", "item", "leads", "wake")

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.leads = False
        self.error: Exception | None = None
        self.wake = threading.Event()


class GroupWriter:
    """``put(item)`` writes ``item`` to ``table``, grouped with whoever puts at the same time."""

    def __init__(
        self, batch_write_item: Callable[..., dict[str, Any]], table: str, key: list[str]
    ) -> None:
        self._write_call, self._table, self._key = batch_write_item, table, key
        self._lock = threading.Lock()
        self._pending: list[_Entry] = []
        self._busy = False  # a leader is writing; while False, _pending is empty

    def put(self, item: dict[str, Any]) -> None:
        """Write ``item`` (a PutRequest's Item: it replaces the whole record); raises NotWritten."""
        entry = _Entry(item)
        with self._lock:
            self._pending.append(entry)
            entry.leads, self._busy = not self._busy, True
        if not entry.leads:
            entry.wake.wait()  # written by a leader, or made the leader
        if entry.leads:
            self._lead()
        if entry.error is not None:
            raise entry.error

    def _lead(self) -> None:
        """Write the next group (the leader is first in it), then hand over to the next waiter."""
        with self._lock:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
        self._write(group)
        with self._lock:
            if self._pending:
                following = self._pending[0]
                following.leads = True
                following.wake.set()
            else:
                self._busy = False
        for entry in group:
            if not entry.leads:
                entry.wake.set()

    def _write(self, group: list[_Entry]) -> None:
        """Write ``group``'s items; set ``error`` on each entry not written. Never raises."""
        # Two puts of one key may not share a call; a record's later state wins.
        waiting = {self._key_of(entry.item): entry for entry in group}
        for duplicate in set(group) - set(waiting.values()):
            duplicate.error = NotWritten("superseded by a later put of the same key")
        requests = [{"PutRequest": {"Item": entry.item}} for entry in waiting.values()]
        for attempt in range(UNPROCESSED_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, _BACKOFF_SECONDS * 2**attempt))  # noqa: S311
            try:
                answer = self._write_call(RequestItems={self._table: requests})
            except Exception as error:  # every waiter hears it; none may be left hanging
                for entry in waiting.values():
                    entry.error = NotWritten(f"BatchWriteItem failed: {type(error).__name__}")
                return
            requests = answer.get("UnprocessedItems", {}).get(self._table, [])
            if not requests:
                return
        for request in requests:
            entry = waiting[self._key_of(request["PutRequest"]["Item"])]
            entry.error = NotWritten("left unprocessed by DynamoDB (throttled)")

    def _key_of(self, item: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(item[name]) for name in self._key)
