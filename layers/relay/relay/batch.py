"""One SQS batch: sends run concurrently, bounded per provider, and stop before the Lambda does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from relay.config import PROVIDERS
from relay.errors import RelayError
from relay.observability import logger
from relay.queue_worker import Redeliver
from relay.secrets import AWS_CALL_LIMIT_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from concurrent.futures import Executor

    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

    from relay.config import Settings
    from relay.queue_worker import Outcome, QueuedMessage, QueueWorker

# Kept back from the Lambda's remaining time after a send: the idempotency write and a
# dead-letter send or visibility change (each bounded), and returning the batch's result.
BATCH_MARGIN_SECONDS = 1.0 + 2 * AWS_CALL_LIMIT_SECONDS


class BatchRun:
    """One invocation's records, all at once; answers which of them SQS must deliver again.

    A slow provider holds only its own messages: each provider has its own limit on sends in
    flight. A message whose send cannot finish before the Lambda's timeout is handed back
    unsent rather than cut off mid-send.
    """

    def __init__(
        self,
        worker: QueueWorker,
        settings: Settings,
        executor: Executor,
        remaining_ms: Callable[[], int],
    ) -> None:
        self._worker = worker
        self._settings = settings
        self._executor = executor
        self._remaining_ms = remaining_ms
        self._limits = {p: asyncio.Semaphore(settings.provider_concurrency) for p in PROVIDERS}

    def partial_response(
        self,
        records: Sequence[Mapping[str, Any]],
        read: Callable[[Mapping[str, Any]], QueuedMessage],
    ) -> PartialItemFailureResponse:
        """The records to retry, in the shape ReportBatchItemFailures wants.

        Built here rather than by Powertools' batch utility, whose package imports every event
        class at cold start (docs/performance.md); the contract is the same.
        """

        async def failed(record: Mapping[str, Any]) -> str | None:
            try:
                await self(read(record))
            except Redeliver:  # its backoff is set: SQS brings it back
                return str(record["messageId"])
            except Exception as error:
                # The type only: an exception's text can carry message data.
                logger.error(
                    "unexpected error; the record comes back", extra={"error": type(error).__name__}
                )
                return str(record["messageId"])
            return None

        async def every() -> list[str | None]:
            return await asyncio.gather(*(failed(record) for record in records))

        return {
            "batchItemFailures": [
                {"itemIdentifier": message_id}
                for message_id in asyncio.run(every())
                if message_id is not None
            ]
        }

    async def __call__(self, queued: QueuedMessage) -> Outcome:
        message = self._worker.parse(queued)
        limit = (
            contextlib.nullcontext()
            if isinstance(message, RelayError)
            else self._limits[message.provider]
        )
        async with limit:
            deadline = self._deadline()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, self._worker.process, queued, message, deadline
            )

    def _deadline(self) -> float | None:
        """When this send must end, or None if not even one whole attempt fits any more."""
        s = self._settings
        room = min(s.send_budget, self._remaining_ms() / 1000 - BATCH_MARGIN_SECONDS)
        if room < min(s.send_budget, s.connect_timeout + s.read_timeout):
            return None
        return time.monotonic() + room
