"""Send once over HTTP: idempotent replays, key conflicts, and the async (queued) webhook."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from relay.auth import sign
from relay.ids import is_uuid
from relay_local.esm import EventSourceMapping
from relay_local.lambda_runtime import LambdaContext, load_function
from relay_local.sandbox import Fault
from tests.conftest import (
    SIGNING_SECRET,
    Aws,
    Webhook,
    bearer,
    fluents_message,
    lancepilot_message,
)
from tests.property.openapi import answer_problems


def queued(aws) -> list[dict]:
    return aws.sqs.receive_message(
        QueueUrl=aws.queue_url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        VisibilityTimeout=0,
    ).get("Messages", [])


ASYNC = {**bearer(), "prefer": "respond-async"}


# --- synchronous --------------------------------------------------------------------------------


def test_a_repeated_request_gets_the_original_answer_without_a_second_send(webhook, lancepilot):
    body = lancepilot_message(idempotency_key="order-1042-shipped")

    first = webhook.post(body, headers=bearer())
    again = webhook.post(body, headers=bearer())

    assert (first.status, again.status) == (201, 201)
    assert again.json["id"] == first.json["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(lancepilot.received) == 1


def test_the_idempotency_key_header_and_webhook_id_are_keys_too(webhook, fluents):
    for headers in ({**bearer(), "idempotency-key": "k-9"}, {**bearer(), "webhook-id": "msg_9"}):
        first = webhook.post(fluents_message(), headers=headers)
        again = webhook.post(fluents_message(), headers=headers)
        assert again.json["id"] == first.json["id"]
    assert len(fluents.received) == 2


def test_without_a_key_each_request_is_a_new_message(webhook, fluents):
    webhook.post(fluents_message(), headers=bearer())
    webhook.post(fluents_message(), headers=bearer())

    assert len(fluents.received) == 2


def test_the_same_key_with_another_message_is_422(webhook, lancepilot):
    webhook.post(lancepilot_message(idempotency_key="k-1"), headers=bearer())

    answer = webhook.post(lancepilot_message(idempotency_key="k-1", text="other"), headers=bearer())

    assert answer.status == 422
    assert list(answer.json["errors"]) == ["idempotency_key"]
    assert len(lancepilot.received) == 1


def test_a_request_still_in_progress_gets_409(relay_env, monkeypatch, aws, lancepilot):
    # The first send must outlast the second request and still be answered: margins of
    # seconds both ways, not the tests' 0.5 s read timeout, which a loaded CI machine can miss.
    monkeypatch.setenv("HTTP_READ_TIMEOUT", "5")
    webhook = Webhook(load_function("webhook"))
    lancepilot.enqueue(Fault.slow(1.0))
    body = lancepilot_message(idempotency_key="k-slow")
    answers = {}
    first = threading.Thread(
        target=lambda: answers.update(first=webhook.post(body, headers=bearer()))
    )
    first.start()
    while not aws.dynamodb.scan(TableName=aws.table)["Items"]:  # the first holds the key
        threading.Event().wait(0.01)

    answers["second"] = webhook.post(body, headers=bearer())
    first.join()

    assert answers["first"].status == 201
    assert answers["second"].status == 409
    assert answers["second"].headers["retry-after"] == "1"
    second = answers["second"]
    assert answer_problems(second.status, second.headers, second.json) == []
    assert len(lancepilot.received) == 1


def test_failures_are_not_remembered_so_a_retry_can_succeed(webhook, lancepilot):
    body = lancepilot_message(idempotency_key="k-retry")
    lancepilot.set_default(Fault.status(503))
    assert webhook.post(body, headers=bearer()).status == 503
    lancepilot.set_default(None)

    answer = webhook.post(body, headers=bearer())

    assert answer.status == 201
    assert "idempotent-replayed" not in answer.headers


def test_a_key_delivered_over_http_is_not_sent_again_from_the_queue(
    webhook, delivery, aws, lancepilot
):
    body = lancepilot_message(idempotency_key="shared-key")
    webhook.post(body, headers=bearer())
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps(body))

    delivery.poll_once()

    assert len(lancepilot.received) == 1


# --- asynchronous ----------------------------------------------------------------------------


def test_respond_async_queues_the_message_unchanged_and_answers_202(webhook, aws, lancepilot):
    raw = json.dumps(lancepilot_message()).encode()

    answer = webhook.post(raw=raw, headers=ASYNC)

    assert answer.status == 202
    assert answer.json == {"id": answer.json["id"], "status": "queued"}
    assert answer.headers["preference-applied"] == "respond-async"
    [message] = queued(aws)
    assert message["Body"] == raw.decode()
    assert message["MessageAttributes"]["RelayId"]["StringValue"] == answer.json["id"]
    assert lancepilot.received == []


def test_a_queued_message_is_delivered_by_the_delivery_function(webhook, delivery, lancepilot):
    answer = webhook.post(lancepilot_message(), headers=ASYNC)

    delivery.drain()

    [sent] = lancepilot.accepted()
    assert sent.json == {"text": {"body": "Your order 1042 has shipped."}}
    assert answer.status == 202


def test_async_requests_are_checked_like_sync_ones(webhook, aws):
    assert webhook.post(lancepilot_message(), headers={"prefer": "respond-async"}).status == 401
    assert webhook.post(lancepilot_message(colour="red"), headers=ASYNC).status == 422
    assert webhook.post(raw=b"{nope", headers=ASYNC).status == 400
    assert queued(aws) == []


def test_a_repeated_async_request_is_queued_once(webhook, aws):
    headers = {**ASYNC, "idempotency-key": "async-1"}

    first = webhook.post(lancepilot_message(), headers=headers)
    again = webhook.post(lancepilot_message(), headers=headers)

    assert (first.status, again.status) == (202, 202)
    assert again.json["id"] == first.json["id"]
    assert again.headers["idempotent-replayed"] == "true"
    [message] = queued(aws)
    assert message["MessageAttributes"]["IdempotencyKey"]["StringValue"] == "async-1"


def test_queue_unavailable_is_503_and_the_key_stays_free(webhook, aws):
    aws.sqs.delete_queue(QueueUrl=aws.queue_url)

    answer = webhook.post(lancepilot_message(idempotency_key="k-503"), headers=ASYNC)

    assert answer.status == 503
    assert "retry-after" in answer.headers
    assert aws.dynamodb.scan(TableName=aws.table)["Items"] == []  # a retry may try again


def test_characters_sqs_refuses_are_escaped_not_lost(webhook, delivery, aws, lancepilot):
    raw = json.dumps(lancepilot_message(text="odd \ufffe char"), ensure_ascii=False).encode()

    assert webhook.post(raw=raw, headers=ASYNC).status == 202
    delivery.drain()

    assert lancepilot.accepted()[0].json == {"text": {"body": "odd \ufffe char"}}


def test_other_preferences_do_not_make_it_async(webhook, lancepilot):
    answer = webhook.post(lancepilot_message(), headers={**bearer(), "prefer": "return=minimal"})

    assert answer.status == 201


def test_an_unsaved_success_record_does_not_turn_a_delivery_into_an_error(
    relay_env, failing_aws_call, lancepilot
):
    failing_aws_call("dynamodb.BatchWriteItem")  # the relay saves "completed" grouped
    webhook = Webhook(load_function("webhook"))

    answer = webhook.post(lancepilot_message(idempotency_key="k-unsaved"), headers=bearer())

    assert answer.status == 201  # not a 503 inviting the caller to send it again
    assert len(lancepilot.received) == 1


def test_an_async_repeat_of_a_delivered_key_gets_the_original_answer(webhook, aws, lancepilot):
    body = lancepilot_message(idempotency_key="k-both")
    first = webhook.post(body, headers=bearer())

    again = webhook.post(body, headers=ASYNC)

    assert (again.status, again.json["id"]) == (201, first.json["id"])
    assert again.headers["idempotent-replayed"] == "true"
    assert queued(aws) == []


def test_a_sync_repeat_of_a_queued_key_gets_the_original_answer(webhook, aws, lancepilot):
    body = lancepilot_message(idempotency_key="k-queued")
    first = webhook.post(body, headers=ASYNC)

    again = webhook.post(body, headers=bearer())

    assert (again.status, again.json) == (202, first.json)
    assert lancepilot.received == []


def test_a_key_reused_for_another_message_is_422_on_either_path(webhook, aws):
    webhook.post(lancepilot_message(idempotency_key="k-x"), headers=bearer())
    webhook.post(lancepilot_message(idempotency_key="k-y"), headers=ASYNC)

    for key, headers in (("k-x", ASYNC), ("k-y", bearer()), ("k-y", ASYNC)):
        answer = webhook.post(
            lancepilot_message(idempotency_key=key, text="other"), headers=headers
        )
        assert answer.status == 422, (key, headers)
    assert len(queued(aws)) == 1


# --- a queued key, on the delivery side -------------------------------------------------------


def copy_of_first_queued(aws) -> dict:
    """What a second SQS delivery of the message the webhook queued would carry."""
    [message] = queued(aws)
    return {
        "QueueUrl": aws.queue_url,
        "MessageBody": message["Body"],
        "MessageAttributes": message["MessageAttributes"],
    }


def test_a_keyed_queued_message_is_sent_once_though_sqs_delivers_it_twice(
    webhook, delivery, aws, lancepilot
):
    answer = webhook.post(lancepilot_message(idempotency_key="k-twice"), headers=ASYNC)
    copy = copy_of_first_queued(aws)
    delivery.drain()

    aws.sqs.send_message(**copy)  # at-least-once: the same message, RelayId and all, again
    delivery.drain()

    assert answer.status == 202
    assert len(lancepilot.accepted()) == 1
    assert queued(aws) == []


def test_a_producer_copy_of_a_key_the_webhook_queued_is_not_sent(
    webhook, delivery, aws, lancepilot
):
    body = lancepilot_message(idempotency_key="k-queued-and-produced")
    webhook.post(body, headers=ASYNC)
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps(body))

    delivery.drain()

    assert len(lancepilot.accepted()) == 1
    assert queued(aws) == []


def test_a_sync_repeat_after_the_queued_message_went_out_still_gets_202(
    webhook, delivery, aws, lancepilot
):
    body = lancepilot_message(idempotency_key="k-queued-then-sent")
    first = webhook.post(body, headers=ASYNC)
    delivery.drain()

    again = webhook.post(body, headers=bearer())

    assert (again.status, again.json) == (202, first.json)
    assert len(lancepilot.accepted()) == 1


def test_a_keyed_queued_message_goes_out_though_a_default_changed_before_delivery(
    relay_env, monkeypatch, aws, lancepilot
):
    # The webhook's record holds the message with the defaults of the moment it was queued.
    monkeypatch.setenv("LANCEPILOT_WORKSPACE_ID", "0b8a7b1e-2a5c-4f3e-9a8e-1c2d3e4f5a6b")
    webhook = Webhook(load_function("webhook"))
    body = lancepilot_message(idempotency_key="k-default-moved")
    del body["workspace"]
    assert webhook.post(body, headers=ASYNC).status == 202

    monkeypatch.setenv("LANCEPILOT_WORKSPACE_ID", "5f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
    handler = load_function("delivery").lambda_handler
    EventSourceMapping(aws.sqs, aws.queue_url, handler, wait_seconds=0, timeout_s=30).drain()

    [sent] = lancepilot.accepted()
    assert "5f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f" in sent.path  # sent, with today's default
    assert queued(aws) == []


def test_a_caller_key_equal_to_a_relay_id_cannot_take_a_queued_message_s_send(
    webhook, delivery, aws, lancepilot
):
    first = webhook.post(lancepilot_message(idempotency_key="k-mine"), headers=ASYNC)
    # Another caller sends a different message under the relay id the 202 gave away.
    webhook.post(
        lancepilot_message(text="not yours"),
        headers={**bearer(), "idempotency-key": first.json["id"]},
    )

    delivery.drain()

    texts = sorted(sent.json["text"]["body"] for sent in lancepilot.accepted())
    assert texts == ["Your order 1042 has shipped.", "not yours"]
    assert queued(aws) == []


# --- a keyed request whose record is gone -----------------------------------------------------


def forget_records(aws: Aws) -> None:
    """Lose every idempotency record, as an expired or never-written one would be."""
    for item in aws.dynamodb.scan(TableName=aws.table)["Items"]:
        aws.dynamodb.delete_item(TableName=aws.table, Key={"id": item["id"]})


def waiting(aws: Aws) -> int:
    """Messages on the delivery queue, visible or not (counted without receiving them)."""
    counts = aws.sqs.get_queue_attributes(
        QueueUrl=aws.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(n) for n in counts.values())


def dead_letters(aws: Aws) -> list[dict[str, Any]]:
    return aws.sqs.receive_message(QueueUrl=aws.dlq_url, MaxNumberOfMessages=10).get("Messages", [])


def test_an_async_retry_after_the_record_was_lost_is_queued_under_the_same_id_and_sent_once(
    webhook, delivery, aws, lancepilot
):
    body = lancepilot_message(idempotency_key="k-record-lost")
    first = webhook.post(body, headers=ASYNC)
    forget_records(aws)

    again = webhook.post(body, headers=ASYNC)

    assert (first.status, again.status) == (202, 202)
    assert "idempotent-replayed" not in again.headers  # nothing remembered it: queued again
    assert again.json["id"] == first.json["id"]
    assert is_uuid(first.json["id"])
    assert waiting(aws) == 2
    delivery.drain(idle_seconds=1.5)  # past the backoff of a copy that met the other in progress
    assert len(lancepilot.received) == 1
    assert (waiting(aws), dead_letters(aws)) == (0, [])


def test_an_async_retry_after_the_invocation_timed_out_unrecorded_is_sent_once(
    relay_env, failing_aws_call, delivery, aws, lancepilot
):
    # SendMessage went through, the "completed" write did not: the record stays in progress
    # until the invocation's time is up, as when the Lambda times out right after queueing.
    failing_aws_call("dynamodb.BatchWriteItem")
    webhook = Webhook(load_function("webhook"))
    body = lancepilot_message(idempotency_key="k-timed-out")
    first = webhook.post(body, headers=ASYNC, context=LambdaContext(timeout_s=2))
    threading.Event().wait(2.1)

    again = webhook.post(body, headers=ASYNC)

    assert (first.status, again.status) == (202, 202)
    assert "idempotent-replayed" not in again.headers
    assert again.json["id"] == first.json["id"]
    assert waiting(aws) == 2
    delivery.drain(idle_seconds=1.5)
    assert len(lancepilot.received) == 1
    assert (waiting(aws), dead_letters(aws)) == (0, [])


def test_a_key_reused_for_another_message_once_its_record_is_gone_gets_another_id_and_is_sent(
    webhook, delivery, aws, lancepilot
):
    first = webhook.post(lancepilot_message(idempotency_key="k-reused"), headers=ASYNC)
    forget_records(aws)

    other = webhook.post(
        lancepilot_message(idempotency_key="k-reused", text="other"), headers=ASYNC
    )

    assert (first.status, other.status) == (202, 202)
    assert other.json["id"] != first.json["id"]
    delivery.drain(idle_seconds=1.5)
    texts = sorted(sent.json["text"]["body"] for sent in lancepilot.accepted())
    assert texts == ["Your order 1042 has shipped.", "other"]
    assert dead_letters(aws) == []


def test_the_id_names_the_key_and_message_not_the_way_the_key_came(webhook, aws, fluents):
    raw = json.dumps(fluents_message()).encode()
    now = int(time.time())
    signed = {
        "content-type": "application/json",
        "prefer": "respond-async",
        "webhook-id": "k-either",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(SIGNING_SECRET, "k-either", now, raw),
    }

    first = webhook.post(raw=raw, headers=signed)
    forget_records(aws)
    again = webhook.post(raw=raw, headers={**ASYNC, "idempotency-key": "k-either"})
    forget_records(aws)
    other_key = webhook.post(raw=raw, headers={**ASYNC, "idempotency-key": "k-other"})

    assert (first.status, again.status, other_key.status) == (202, 202, 202)
    assert again.json["id"] == first.json["id"]  # one record key, whoever sent it: one id
    assert other_key.json["id"] != first.json["id"]


def test_a_sync_retry_after_the_record_was_lost_answers_with_the_first_id(webhook, aws, lancepilot):
    body = lancepilot_message(idempotency_key="k-sync-lost")
    first = webhook.post(body, headers=bearer())
    forget_records(aws)

    again = webhook.post(body, headers=bearer())

    # A send now is not keyed by its id: with its record gone it goes out again (sqs.md says
    # so), but under the first answer's id, so the two are seen to be one message.
    assert (first.status, again.status) == (201, 201)
    assert again.json["id"] == first.json["id"]
    assert len(lancepilot.received) == 2
