"""The per-provider limit bounds requests at the provider, not messages in hand.

Through the real delivery handler, moto and the loopback stand-ins: a message's idempotency
writes happen outside the provider's slots, and a message that cannot get a slot before its
deadline is handed back unsent, to be delivered on its next receive.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from relay_local.lambda_runtime import LambdaContext, load_function
from tests.conftest import handler_session, lancepilot_message, received_records


def _run_batch(
    aws: Any, lancepilot: Any, count: int, latency: float, context: LambdaContext | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Queue ``count`` Lancepilot messages (texts "0", "1", ...) and hand them as one batch to
    a freshly loaded delivery handler while Lancepilot answers after ``latency``; the records
    and the handler's answer."""
    handler = load_function("delivery").lambda_handler
    for i in range(count):
        aws.sqs.send_message(
            QueueUrl=aws.queue_url, MessageBody=json.dumps(lancepilot_message(text=str(i)))
        )
    lancepilot.latency = latency
    try:
        records = received_records(aws, count)
        return records, handler({"Records": records}, context or LambdaContext())
    finally:
        lancepilot.latency = 0.0


@pytest.fixture
def completion_writes() -> Any:
    """Each PutItem and BatchWriteItem takes 0.25 s more, as a network round trip would; yields
    when each BatchWriteItem (deliveries' completion writes, grouped) ended, in
    ``time.monotonic()`` (clients created after: load the handler once this is set up)."""
    events = handler_session().events
    ended: list[float] = []

    def wait(**_: Any) -> None:
        time.sleep(0.25)

    def done(**_: Any) -> None:
        ended.append(time.monotonic())

    hooks = [
        ("before-call.dynamodb.PutItem", wait),
        ("before-call.dynamodb.BatchWriteItem", wait),
        ("after-call.dynamodb.BatchWriteItem", done),
    ]
    for name, hook in hooks:
        events.register(name, hook)
    yield ended
    for name, hook in hooks:
        events.unregister(name, hook)


def test_idempotency_writes_do_not_hold_a_provider_slot(
    relay_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    completion_writes: list[float],
    aws: Any,
    lancepilot: Any,
) -> None:
    monkeypatch.setenv("PROVIDER_CONCURRENCY", "2")
    _, answer = _run_batch(aws, lancepilot, 4, latency=0.3)
    assert answer == {"batchItemFailures": []}
    assert len(lancepilot.accepted()) == 4
    assert lancepilot.peak_in_flight == 2  # the limit, never more
    # The third and fourth messages wrote their records while the first two were at the
    # provider, and were sent as soon as a slot was free: before either of the first two's
    # completion writes had ended (after them, if those writes held a slot).
    _, _, third, fourth = sorted(r.at for r in lancepilot.received)
    assert max(third, fourth) < min(completion_writes)


def test_a_message_that_gets_no_slot_before_its_deadline_is_handed_back_unsent(
    relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, aws: Any, lancepilot: Any
) -> None:
    from relay.batch import BATCH_MARGIN_SECONDS

    monkeypatch.setenv("PROVIDER_CONCURRENCY", "1")
    monkeypatch.setenv("HTTP_READ_TIMEOUT", "2.5")  # one attempt: 0.5 s connect + 2.5 s read
    # The Lambda's time, not the send budget, bounds these sends: a whole attempt and 1 s to
    # spare once the margin is kept back (room for the first message's record write on a
    # loaded machine). The message that does not get the slot may wait that long for it, not
    # the 2 s the first send holds it.
    context = LambdaContext(timeout_s=BATCH_MARGIN_SECONDS + 3.0 + 1.0)
    records, answer = _run_batch(aws, lancepilot, 2, latency=2.0, context=context)
    time.sleep(2.3)  # a request sent late would be recorded by now
    [handed_back] = answer["batchItemFailures"]
    [unsent] = [r for r in records if r["messageId"] == handed_back["itemIdentifier"]]
    [sent] = [r["body"] for r in records if r is not unsent]
    assert [r.json["text"]["body"] for r in lancepilot.received] == [json.loads(sent)["text"]]
    assert lancepilot.peak_in_flight == 1

    # Nothing is lost: its idempotency record is gone, and its next receive delivers it.
    again = dict(unsent, attributes={**unsent["attributes"], "ApproximateReceiveCount": "2"})
    handler = load_function("delivery").lambda_handler
    assert handler({"Records": [again]}, LambdaContext()) == {"batchItemFailures": []}
    assert sorted(r.json["text"]["body"] for r in lancepilot.accepted()) == ["0", "1"]


def test_waiting_for_a_slot_does_not_use_up_the_send_budget(
    relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, aws: Any, lancepilot: Any
) -> None:
    monkeypatch.setenv("PROVIDER_CONCURRENCY", "1")
    monkeypatch.setenv("SEND_BUDGET_SECONDS", "1")  # one attempt (0.5 + 0.5 s), no more
    _, answer = _run_batch(aws, lancepilot, 3, latency=0.4)  # each send holds the slot 0.4 s
    # The third waited about 0.8 s for the slot, most of its budget, and still had all of it.
    assert answer == {"batchItemFailures": []}
    assert sorted(r.json["text"]["body"] for r in lancepilot.accepted()) == ["0", "1", "2"]
    assert lancepilot.peak_in_flight == 1
