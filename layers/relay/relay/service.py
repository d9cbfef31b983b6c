"""What POST /v1/messages does with a message that passed every check: send it now, or queue it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.delivery import Delivery
from relay.idempotency import DELIVER, ENQUEUE, REPLAYED, caller_key, request_for
from relay.ids import new_relay_id
from relay.observability import logger
from relay.phone import mask

if TYPE_CHECKING:
    from collections.abc import Mapping

    from relay.delivery import Deliverer
    from relay.idempotency import Idempotency
    from relay.message import Message
    from relay.queues import Queues


@dataclass(frozen=True)
class Queued:
    """A message put on the delivery queue (answered 202)."""

    relay_id: str


class MessageService:
    """Sends or queues accepted messages, once per idempotency key."""

    def __init__(self, deliverer: Deliverer, queues: Queues, idempotency: Idempotency) -> None:
        self._deliverer = deliverer
        self._queues = queues
        self._idempotency = idempotency
        self._deliver_once = idempotency.once(deliverer.deliver_record, DELIVER)
        self._enqueue_once = idempotency.once(self._enqueue, ENQUEUE)

    def accept(
        self,
        message: Message,
        body: bytes,
        headers: Mapping[str, str],
        deadline: float,
        *,
        queue: bool,
    ) -> tuple[Delivery | Queued, bool]:
        """Deliver now, or queue when asked and a queue is configured.

        Returns the outcome and whether it is a replay. A key already used answers with the
        original outcome, whichever way the first request went.
        """
        queue = queue and self._queues.delivery_url is not None
        key = caller_key(message, headers)
        if key is None:
            if queue:
                return Queued(self._enqueue({}, message, body, new_relay_id(), None)["id"]), False
            return self._deliverer.deliver(message, new_relay_id(), deadline), False

        request = request_for(key, message)
        # The other way's record first, so that a repeat gets the original answer.
        earlier = self._idempotency.lookup(DELIVER if queue else ENQUEUE, request)
        if earlier is not None:
            return _outcome(earlier), True
        if queue:
            result = self._enqueue_once(
                request=request, message=message, body=body, relay_id=new_relay_id(), key=key
            )
        else:
            result = self._deliver_once(
                request=request, message=message, relay_id=new_relay_id(), deadline=deadline
            )
        return _outcome(result), bool(result.get(REPLAYED))

    def _enqueue(
        self,
        request: dict[str, Any],
        message: Message,
        body: bytes,
        relay_id: str,
        key: str | None,
    ) -> dict[str, Any]:
        attributes = {"RelayId": relay_id}
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
        return {"id": relay_id, "status": "queued", "message_id": message_id}


def _outcome(record: Mapping[str, Any]) -> Delivery | Queued:
    if record.get("status") == "queued":
        return Queued(record["id"])
    return Delivery.from_record(record)
