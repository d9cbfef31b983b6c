"""What POST /v1/messages does with a message that passed every check: send it now, or queue it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from relay.delivery import Delivery
from relay.idempotency import DELIVER, QUEUED, QUEUED_BY, REPLAYED, request_for
from relay.ids import keyed_relay_id, new_relay_id
from relay.observability import logger
from relay.phone import mask

if TYPE_CHECKING:
    from collections.abc import Mapping

    from relay.delivery import Deliverer
    from relay.idempotency import Idempotency
    from relay.message import Message
    from relay.queues import Queues


class Queued(NamedTuple):
    """A message put on the delivery queue (answered 202)."""

    relay_id: str


class MessageService:
    """Sends or queues accepted messages, once per idempotency key."""

    def __init__(self, deliverer: Deliverer, queues: Queues, idempotency: Idempotency) -> None:
        self._deliverer = deliverer
        self._queues = queues
        # One record per key, whichever way the message went, so a repeat either way gets the
        # original answer from the conditional write itself: no lookup of a second record.
        self._accept_once = idempotency.once(self._accept)

    def accept(
        self,
        message: Message,
        body: bytes,
        key: str | None,
        deadline: float,
        *,
        queue: bool,
    ) -> tuple[Delivery | Queued, bool]:
        """Deliver now, or queue when asked and a queue is configured.

        Returns the outcome and whether it is a replay. A key already used answers with the
        original outcome, whichever way the first request went.
        """
        queue = queue and self._queues.delivery_url is not None
        if key is None:
            relay_id = new_relay_id()
            return _outcome(self._accept({}, message, body, relay_id, deadline, queue, None)), False
        request = request_for(key, message)
        # Named by what the record holds, not drawn at random: if the record of a queued request
        # is lost (the Lambda timed out after SendMessage, or it expired), the caller's retry
        # queues a copy under the same id, and the delivery function sends that id only once.
        # A sync send is never keyed by its id, so there the id only ties a retry to the first
        # answer (a 504's id, say) and their log lines together.
        relay_id = keyed_relay_id(DELIVER, key, request["message"])
        result = self._accept_once(
            request=request,
            message=message,
            body=body,
            relay_id=relay_id,
            deadline=deadline,
            queue=queue,
            key=key,
        )
        return _outcome(result), bool(result.get(REPLAYED))

    def _accept(
        self,
        request: dict[str, Any],
        message: Message,
        body: bytes,
        relay_id: str,
        deadline: float,
        queue: bool,
        key: str | None,
    ) -> dict[str, Any]:
        if queue:
            return self._enqueue(message, body, relay_id, key)
        return self._deliverer.deliver(message, relay_id, deadline)._asdict()

    def _enqueue(
        self, message: Message, body: bytes, relay_id: str, key: str | None
    ) -> dict[str, Any]:
        attributes = {"RelayId": relay_id, QUEUED_BY: "webhook"}
        if key is not None:
            attributes["IdempotencyKey"] = key
        message_id = self._queues.enqueue(body.decode("utf-8"), attributes)
        logger.info(
            "message queued",
            extra={
                "relay_id": relay_id,
                "outcome": "queued",
                "provider": message.provider,
                "to": mask(message.to),
                "sqs_message_id": message_id,
            },
        )
        return {"id": relay_id, "status": QUEUED, "message_id": message_id}


def _outcome(record: Mapping[str, Any]) -> Delivery | Queued:
    if record.get("status") == QUEUED:
        return Queued(record["id"])
    return Delivery.from_record(record)
