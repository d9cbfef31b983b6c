"""What POST /v1/messages does with a message that passed every check: send it now, or queue it.

A synchronous send that gets no answer (ProviderTimeout: the provider may have the message) is
not left to the caller's retry, which would send it again: the message is parked in the
dead-letter queue as the delivery function parks one ("held"), and its key answers every
repeat with the same 504. Only if that parking fails does the failure free the key as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from relay.delivery import Delivery
from relay.errors import ProviderTimeout
from relay.idempotency import (
    DELIVER,
    HELD,
    QUEUED,
    QUEUED_BY,
    QUEUED_BY_WEBHOOK,
    REPLAYED,
    request_for,
)
from relay.ids import keyed_relay_id, new_relay_id
from relay.observability import logger
from relay.phone import mask
from relay.queues import park_reason, sqs_safe, string_attribute

if TYPE_CHECKING:
    from collections.abc import Mapping

    from relay.delivery import Deliverer
    from relay.idempotency import Idempotency
    from relay.message import Message
    from relay.queues import Queues


class Queued(NamedTuple):
    """A message put on the delivery queue (answered 202)."""

    relay_id: str


class Held(NamedTuple):
    """A synchronous send that got no answer, parked in the dead-letter queue (answered 504)."""

    relay_id: str
    provider: str
    message: str  # ProviderTimeout's, as the caller was told

    def answer(self) -> dict[str, Any]:
        """The 504's body: ProviderTimeout's, and that the message is held for review."""
        return {
            "message": self.message,
            "provider": self.provider,
            "id": self.relay_id,
            "status": HELD,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Held:
        """A held message as the idempotency store kept it."""
        return cls(record["id"], record["provider"], record["message"])


class MessageService:
    """Sends or queues accepted messages, once per idempotency key."""

    def __init__(self, deliverer: Deliverer, queues: Queues, idempotency: Idempotency) -> None:
        self._deliverer = deliverer
        self._queues = queues
        self._idempotency = idempotency
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
    ) -> tuple[Delivery | Queued | Held, bool]:
        """Deliver now, or queue when asked and a queue is configured.

        Returns the outcome and whether it is a replay. A key already used answers with the
        original outcome, whichever way the first request went. A send that got no answer is
        Held (parked) when the dead-letter queue takes it, else ProviderTimeout is raised.
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
        try:
            return self._deliverer.deliver(message, relay_id, deadline)._asdict()
        except ProviderTimeout as error:
            # Returned, not raised: the record of a held message is kept (COMPLETED), so a
            # repeat gets this answer back and is not sent.
            return self._hold(message, body, relay_id, key, error)

    def _enqueue(
        self, message: Message, body: bytes, relay_id: str, key: str | None
    ) -> dict[str, Any]:
        attributes = {"RelayId": relay_id, QUEUED_BY: QUEUED_BY_WEBHOOK}
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

    def _hold(
        self, message: Message, body: bytes, relay_id: str, key: str | None, error: ProviderTimeout
    ) -> dict[str, Any]:
        """Park a message whose send got no answer, as the delivery function parks one: flagged
        PossiblyDelivered, and with what a redrive is sent once by (RelayId, QueuedBy).

        If the dead-letter queue cannot take it, ``error`` is raised again (the caller's retry
        may send it again, as before), after marking the key's send as ambiguous so that a
        later parking of another copy says PossiblyDelivered.
        """
        detail = f"{error.message}; a synchronous request, answered 504 and not resent"
        reason = park_reason("exhausted", None, detail, relay_id, key, possibly_delivered=True)
        try:
            if self._queues.dead_letter_url is None:  # a deployment without DEAD_LETTER_QUEUE_URL
                raise LookupError("no dead-letter queue configured")
            letter_id = self._queues.dead_letter(
                sqs_safe(body.decode("utf-8")),
                reason,
                {QUEUED_BY: string_attribute(QUEUED_BY_WEBHOOK)},
            )
        except Exception as failure:
            # The type only: an exception's text can carry message data.
            logger.error(
                "could not dead-letter an unanswered send; the caller may send it again",
                extra={"relay_id": relay_id, "error": type(failure).__name__},
            )
            if key is not None:
                self._idempotency.mark_ambiguous(key, relay_id)
            raise error from None
        logger.warning(
            "message dead-lettered",
            extra={
                "relay_id": relay_id,
                "provider": message.provider,
                "outcome": "dead_lettered",
                "error_kind": reason["ErrorKind"],
                "provider_status": None,
                "possibly_delivered": True,
                "queued_by": QUEUED_BY_WEBHOOK,
                "sqs_message_id": letter_id,
            },
        )
        return {
            "id": relay_id,
            "status": HELD,
            "provider": error.provider,
            "message": error.body()["message"],
        }


def _outcome(record: Mapping[str, Any]) -> Delivery | Queued | Held:
    status = record.get("status")
    if status == QUEUED:
        return Queued(record["id"])
    if status == HELD:
        return Held.from_record(record)
    return Delivery.from_record(record)
