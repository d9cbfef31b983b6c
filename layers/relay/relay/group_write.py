"""Group commit for DynamoDB puts: threads that write at once share one BatchWriteItem.

A batch's sends finish in waves (one per provider latency); each then marks its idempotency
record COMPLETED. One UpdateItem a message was half the relay's DynamoDB calls and a quarter of
a 100-message batch's CPU (docs/performance.md). Here the first writer writes at once; whoever
arrives while that write is in flight waits and goes in the next group, written by the first of
them. Nobody returns before their own item is written: a message is reported delivered only
once its record is, as with the UpdateItem.

Time: a put waits at most ``WAIT_LIMIT_SECONDS`` for its group's write to start (normally the
write in flight ahead of it; with more than MAX_GROUP writers queued, more than one), then
withdraws unwritten; once taken, it waits for its group's one call. So a put takes at most two
of FAST_FAIL's bounded calls, within what relay.batch keeps back, and a writer that finds no
write in flight (the webhook's, alone) makes one, as the UpdateItem did. To keep that bound,
what DynamoDB hands back unprocessed is not sent again: those writers are told at once, as after
a throttled UpdateItem's last attempt (botocore still retries a call throttled whole). Rare on
the template's on-demand table; a writer told it (or withdrawn) leaves its record in progress,
which is what the relay did when an UpdateItem failed (a delivery stays delivered;
relay.idempotency).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from relay.secrets import AWS_CALL_LIMIT_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

# BatchWriteItem's limit of requests per call.
MAX_GROUP = 25
WAIT_LIMIT_SECONDS = AWS_CALL_LIMIT_SECONDS

_Key = tuple[tuple[tuple[str, Any], ...], ...]


class NotWritten(Exception):
    """The item was not written: the call failed, DynamoDB left it unprocessed, or its turn did
    not come in time."""


class _Entry:
    __slots__ = ("error", "item", "leads", "taken", "wake", "written")

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.leads = False  # this entry's thread writes the next group
        self.taken = False  # in a group being written: too late to withdraw
        self.written = False
        self.error: Exception = NotWritten("not written")
        self.wake = threading.Event()


class GroupWriter:
    """``put(item)`` writes ``item`` to ``table``, grouped with whoever puts at the same time.

    ``batch_write_item`` is a DynamoDB client's; ``key`` names the table's key attributes.
    """

    def __init__(
        self, batch_write_item: Callable[..., Mapping[str, Any]], table: str, key: Sequence[str]
    ) -> None:
        self._write_call, self._table, self._key = batch_write_item, table, tuple(key)
        self._lock = threading.Lock()
        self._pending: list[_Entry] = []
        self._busy = False  # a leader is writing; while False, _pending is empty

    def put(self, item: dict[str, Any]) -> None:
        """Write ``item`` (a PutRequest's Item: it replaces the whole record); raises NotWritten."""
        entry = _Entry(item)
        with self._lock:
            self._pending.append(entry)
            entry.leads, self._busy = not self._busy, True
        if not entry.leads and not entry.wake.wait(WAIT_LIMIT_SECONDS):
            with self._lock:
                if not entry.taken and not entry.leads:
                    self._pending.remove(entry)
                    raise NotWritten("its turn to be written did not come in time")
            entry.wake.wait()  # taken (its write is bounded) or made the leader just now
        if entry.leads:
            self._lead()
        if not entry.written:
            raise entry.error

    def _lead(self) -> None:
        """Write the next group (the leader is first in it), then hand over to the next waiter."""
        group: list[_Entry] = []
        try:
            with self._lock:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                for entry in group:
                    entry.taken = True
            self._write(group)
        finally:  # whatever escaped the write, nobody may be left waiting
            with self._lock:
                if self._pending:
                    following = self._pending[0]
                    following.leads = True
                    following.wake.set()
                else:
                    self._busy = False
            for entry in group:
                entry.wake.set()

    def _write(self, group: list[_Entry]) -> None:
        """Write ``group``'s items in one call, marking each entry written or setting its error."""
        # Two puts of one key may not share a call; a record's later state wins.
        latest = {self._key_of(entry.item): entry for entry in group}
        for duplicate in set(group) - set(latest.values()):
            duplicate.error = NotWritten("superseded by a later put of the same key")
        requests = [{"PutRequest": {"Item": entry.item}} for entry in latest.values()]
        try:
            answer = self._write_call(RequestItems={self._table: requests})
        except Exception as error:
            for entry in latest.values():
                entry.error = NotWritten(f"BatchWriteItem failed: {type(error).__name__}")
            return
        left = {
            self._key_of(request["PutRequest"]["Item"])
            for requests in answer.get("UnprocessedItems", {}).values()
            for request in requests
        }
        for key, entry in latest.items():
            if key in left:
                entry.error = NotWritten("left unprocessed by DynamoDB (throttled)")
            else:
                entry.written = True

    def _key_of(self, item: dict[str, Any]) -> _Key:
        return tuple(tuple(sorted(item[name].items())) for name in self._key)
