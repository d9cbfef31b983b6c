"""One SQS batch: sends run concurrently, bounded per provider, and stop before the Lambda does.

The bound is on requests at a provider (``PROVIDER_CONCURRENCY`` each, held by the transport
around the HTTP request alone), not on messages in hand: a message's idempotency writes do not
take a provider's slot.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from relay.config import LANE_THREADS_PER_SLOT, PROVIDERS
from relay.errors import RelayError
from relay.observability import logger
from relay.queue_worker import Redeliver
from relay.secrets import AWS_CALL_LIMIT_SECONDS
from relay.transport import sends_end_by

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from concurrent.futures import Executor

    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

    from relay.config import ProviderName, Settings
    from relay.message import Message
    from relay.queue_worker import Outcome, QueuedMessage, QueueWorker

# Kept back from the Lambda's remaining time after a send, for at most three bounded AWS calls
# (the idempotency record's write or delete; the ambiguous-send marker's write or read; a
# dead-letter send or visibility change) and returning the batch's result. A delivery makes
# only the first: its grouped write takes at most two calls (relay.group_write).
BATCH_MARGIN_SECONDS = 1.0 + 3 * AWS_CALL_LIMIT_SECONDS


def send_lanes(settings: Settings) -> dict[ProviderName | None, Executor]:
    """Threads for a batch's messages, made once per process: one pool per provider, so a slow
    provider holds up only its own messages; and one (key None) for messages that are not
    valid, which go to the dead-letter queue without a send.

    A provider's pool has ``LANE_THREADS_PER_SLOT`` threads per send it may have in flight: a
    thread carries a message through its idempotency writes too, and the limit bounds only the
    requests at the provider (the transport's slots), so that while ``provider_concurrency``
    threads wait on the provider, others write the next records and the last ones' completions.
    Threads start as messages arrive (never more than a batch has) and are kept across
    invocations.

    Plain thread pools, not asyncio: its import costs about 20 ms of every cold start (-X
    importtime, docs/performance.md), and the sends block on sockets anyway.
    """
    size = settings.provider_concurrency
    lanes: dict[ProviderName | None, Executor] = {
        provider: ThreadPoolExecutor(LANE_THREADS_PER_SLOT * size, f"send-{provider}")
        for provider in PROVIDERS
    }
    lanes[None] = ThreadPoolExecutor(size, thread_name_prefix="send-invalid")
    return lanes


class BatchRun:
    """One invocation's records, all at once; answers which of them SQS must deliver again.

    A message whose send cannot finish before the Lambda's timeout is handed back unsent rather
    than cut off mid-send.
    """

    def __init__(
        self,
        worker: QueueWorker,
        settings: Settings,
        lanes: Mapping[ProviderName | None, Executor],
        remaining_ms: Callable[[], int],
    ) -> None:
        self._worker = worker
        self._settings = settings
        self._lanes = lanes
        self._remaining_ms = remaining_ms

    def partial_response(
        self,
        records: Sequence[Mapping[str, Any]],
        read: Callable[[Mapping[str, Any]], QueuedMessage],
    ) -> PartialItemFailureResponse:
        """The records to retry, in the shape ReportBatchItemFailures wants.

        Built here rather than by Powertools' batch utility, whose package imports every event
        class at cold start (docs/performance.md); the contract is the same.
        """
        # A record without an id fails the whole invocation, before anything is sent.
        ids = [str(record["messageId"]) for record in records]
        sends = [self._start(record, read) for record in records]
        # Every send is waited for: none may outlive the invocation (its outcomes go unflushed).
        return {
            "batchItemFailures": [
                {"itemIdentifier": message_id}
                for message_id, send in zip(ids, sends, strict=True)
                if not _succeeded(send)
            ]
        }

    def _start(
        self, record: Mapping[str, Any], read: Callable[[Mapping[str, Any]], QueuedMessage]
    ) -> Future[Outcome]:
        try:
            queued = read(record)
            message = self._worker.parse(queued)
        except Exception as error:
            unread: Future[Outcome] = Future()
            unread.set_exception(error)
            return unread
        lane = None if isinstance(message, RelayError) else message.provider
        return self._lanes[lane].submit(self._send, queued, message)

    def _send(self, queued: QueuedMessage, message: Message | RelayError) -> Outcome:
        # Sends must be over by `end`, whatever they wait for. The deadline is taken when a
        # thread takes the message up, not when the batch arrived, and taken again when the
        # send gets its slot at the provider (relay.transport), so that neither wait uses up
        # the message's send budget; a message that gets no slot while a whole attempt still
        # fits before `end` is handed back unsent.
        end = time.monotonic() + self._remaining_ms() / 1000 - BATCH_MARGIN_SECONDS
        with sends_end_by(end):
            return self._worker.process(queued, message, self._deadline(end))

    def _deadline(self, end: float) -> float | None:
        """When this send must end, or None if not even one whole attempt fits any more."""
        s = self._settings
        now = time.monotonic()
        room = min(s.send_budget, end - now)
        if room < min(s.send_budget, s.connect_timeout + s.read_timeout):
            return None
        return now + room


def _succeeded(send: Future[Outcome]) -> bool:
    try:
        send.result()
    except Redeliver:  # its backoff is set: SQS brings it back
        return False
    except Exception as error:
        # The type only: an exception's text can carry message data.
        logger.error(
            "unexpected error; the record comes back", extra={"error": type(error).__name__}
        )
        return False
    return True
