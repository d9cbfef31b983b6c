"""What POST /v1/messages does with a message that passed every check: send it now, or queue it."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
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


# Characters outside what SQS accepts in a message body.
_SQS_REFUSES = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class MessageService:
    """Sends or queues accepted messages, once per idempotency key."""

    def __init__(self, deliverer: Deliverer, queues: Queues, idempotency: Idempotency) -> None:
        self._deliverer = deliverer
        self._queues = queues
        self._deliver_once = idempotency.once(self._deliver, DELIVER)
        self._enqueue_once = idempotency.once(self._enqueue, ENQUEUE)

    @property
    def can_queue(self) -> bool:
        return self._queues.delivery_url is not None

    def send_now(
        self, message: Message, headers: Mapping[str, str], deadline: float
    ) -> tuple[Delivery, bool]:
        """Deliver now; (the delivery, whether it is a replay of an earlier one)."""
        key = caller_key(message, headers)
        if key is None:
            return self._deliverer.deliver(message, new_relay_id(), deadline), False
        result = self._deliver_once(
            request=request_for(key, message),
            message=message,
            relay_id=new_relay_id(),
            deadline=deadline,
        )
        return Delivery.from_record(result), bool(result.get(REPLAYED))

    def queue(self, message: Message, body: bytes, headers: Mapping[str, str]) -> tuple[str, bool]:
        """Put the message on the delivery queue, unchanged; (its relay id, whether replayed)."""
        key = caller_key(message, headers)
        relay_id = new_relay_id()
        if key is None:
            queued = self._enqueue(
                request={}, message=message, body=body, relay_id=relay_id, key=None
            )
            return queued["id"], False
        result = self._enqueue_once(
            request=request_for(key, message),
            message=message,
            body=body,
            relay_id=relay_id,
            key=key,
        )
        return result["id"], bool(result.get(REPLAYED))

    def _deliver(
        self, request: dict[str, Any], message: Message, relay_id: str, deadline: float
    ) -> dict[str, Any]:
        return asdict(self._deliverer.deliver(message, relay_id, deadline))

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
        text = body.decode("utf-8")
        if _SQS_REFUSES.search(text):
            # SQS refuses a few characters JSON allows raw (U+FFFE, say): send the same JSON
            # with them escaped.
            text = json.dumps(json.loads(text))
        message_id = self._queues.enqueue(text, attributes)
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
        return {"id": relay_id, "message_id": message_id}
