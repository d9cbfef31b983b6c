"""The webhook's send that got no answer: held (parked, answered 504) or, if it cannot be parked,
the 504 as before. In-memory fakes for the queue, the idempotency store and the provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from relay.errors import ProviderTimeout
from relay.message import Message
from relay.queues import park_reason
from relay.service import Held, MessageService

MESSAGE = Message("lancepilot", "+14155550123", "Your order 1042 has shipped.", workspace="w")
BODY = b'{"provider": "lancepilot", "to": "+14155550123", "text": "Your order 1042 has shipped."}'


class Unanswered:
    """A provider that read the request and never answered."""

    def deliver(self, message: Message, relay_id: str, deadline: float) -> Any:
        error = ProviderTimeout(message.provider, "no answer in time")
        error.relay_id = relay_id
        raise error


@dataclass
class FakeQueues:
    delivery_url: str | None = "https://sqs/delivery"
    dead_letter_url: str | None = "https://sqs/dead"
    down: bool = False
    parked: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def dead_letter(self, body: str, reason: dict[str, Any], original: dict[str, Any]) -> str:
        if self.down:
            raise ConnectionError("SQS is unreachable")
        self.parked.append((body, reason, original))
        return "dlq-message-1"


@dataclass
class FakeIdempotency:
    marked: list[tuple[str, str]] = field(default_factory=list)

    def once(self, function: Any) -> Any:
        return function  # every key new: what the real store does on a first request

    def mark_ambiguous(self, key: str, relay_id: str) -> None:
        self.marked.append((key, relay_id))


def service(queues: FakeQueues, idempotency: FakeIdempotency) -> MessageService:
    return MessageService(Unanswered(), queues, idempotency)  # type: ignore[arg-type]


def test_an_unanswered_send_is_parked_as_the_delivery_function_parks_one() -> None:
    queues, idempotency = FakeQueues(), FakeIdempotency()

    outcome, replayed = service(queues, idempotency).accept(MESSAGE, BODY, None, 0.0, queue=False)

    assert isinstance(outcome, Held)
    assert not replayed
    assert outcome.answer() == {
        "message": "lancepilot gave no answer in time; the message may or may not have been "
        "sent, so it was not resent",
        "provider": "lancepilot",
        "id": outcome.relay_id,
        "status": "held",
    }
    [(body, reason, original)] = queues.parked
    assert body == BODY.decode()
    assert reason == park_reason(
        "exhausted",
        None,
        "lancepilot gave no answer in time; the message may or may not have been sent; "
        "a synchronous request, answered 504 and not resent",
        outcome.relay_id,
        None,
        possibly_delivered=True,
    )
    assert original == {"QueuedBy": {"DataType": "String", "StringValue": "webhook"}}
    assert idempotency.marked == []


@pytest.mark.parametrize("queues", [FakeQueues(down=True), FakeQueues(dead_letter_url=None)])
def test_if_it_cannot_be_parked_the_timeout_is_raised_as_before(queues: FakeQueues) -> None:
    idempotency = FakeIdempotency()

    with pytest.raises(ProviderTimeout) as raised:
        service(queues, idempotency).accept(MESSAGE, BODY, None, 0.0, queue=False)

    assert raised.value.relay_id is not None
    assert queues.parked == []
    assert idempotency.marked == []  # no key: no other copy could be flagged by one


def test_a_keyed_send_that_cannot_be_parked_marks_its_key_as_ambiguous() -> None:
    queues, idempotency = FakeQueues(down=True), FakeIdempotency()

    with pytest.raises(ProviderTimeout) as raised:
        service(queues, idempotency).accept(MESSAGE, BODY, "order-7", 0.0, queue=False)

    # Under the key, as the delivery function marks one: a later parking of another copy with
    # the same key then says PossiblyDelivered.
    assert idempotency.marked == [("order-7", raised.value.relay_id)]
