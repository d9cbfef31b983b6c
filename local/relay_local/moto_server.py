"""moto_server with its SQS queues and DynamoDB writes made safe to call from several threads.

    python -m relay_local.moto_server -H 127.0.0.1 -p 4566   # moto.server's own options

moto_server answers each request on a thread of its own, but neither its SQS queues nor its
DynamoDB conditions hold a lock. Concurrent receives can hand one message to two pollers (each
sees it visible before either marks it received); concurrent deletes each rebuild the queue's
message list from a copy, so one can put back a message another just deleted, which then comes
back after the visibility timeout; two conditional PutItems can both find no item and both
succeed. SQS and DynamoDB do none of these. Every such call here takes one lock, so the local
stack behaves as AWS does in the ways the relay relies on: one delivery per receive, a delete
that holds, a condition that excludes. A long poll gives the lock up while it waits.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

# Re-entrant: SQSBackend.delete_message_batch calls delete_message.
_LOCK = threading.RLock()

_SQS_CALLS = (
    "send_message",
    "send_message_batch",
    "receive_message",
    "delete_message",
    "delete_message_batch",
    "change_message_visibility",
    "change_message_visibility_batch",
    "purge_queue",
    "get_queue_attributes",
)
_DYNAMODB_CALLS = (
    "put_item",
    "update_item",
    "delete_item",
    "batch_write_item",
    "transact_write_items",
)


def _one_at_a_time(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return call(*args, **kwargs)

    return locked


def _wait_unlocked(wait: Callable[[Any, int], None]) -> Callable[[Any, int], None]:
    """A long poll's wait for messages, with the lock given up so that sends can arrive."""

    @functools.wraps(wait)
    def waiting(queue: Any, timeout: int) -> None:
        _LOCK.release()
        try:
            wait(queue, timeout)
        finally:
            _LOCK.acquire()

    return waiting


def install() -> None:
    """Patch moto's SQS and DynamoDB backends in this process (once)."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.sqs.models import Queue, SQSBackend

    if getattr(SQSBackend, "_relay_one_at_a_time", False):
        return
    for backend, names in ((SQSBackend, _SQS_CALLS), (DynamoDBBackend, _DYNAMODB_CALLS)):
        for name in names:
            setattr(backend, name, _one_at_a_time(getattr(backend, name)))
    # Called only from receive_message, which holds the lock exactly once.
    Queue.wait_for_messages = _wait_unlocked(Queue.wait_for_messages)  # type: ignore[method-assign,assignment]
    SQSBackend._relay_one_at_a_time = True  # type: ignore[attr-defined]


def main() -> None:
    from moto.server import main as moto_main

    install()
    moto_main()


if __name__ == "__main__":
    main()
