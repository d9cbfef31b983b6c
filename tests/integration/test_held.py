"""A synchronous send that gets no answer is held: parked in the dead-letter queue as the delivery
function parks one (PossiblyDelivered), answered 504 with "status": "held", and its key answers
every repeat the same way without a second send. An operator's redrive of it is sent once.
Through the real handlers, moto, the sandbox providers and the real `relay dlq` tool."""

from __future__ import annotations

import json
import time

import pytest

from relay.auth import sign
from relay_local.lambda_runtime import load_function
from relay_local.sandbox import Fault
from relay_ops.cli import main as relay_tool
from tests.conftest import SIGNING_SECRET, Webhook, bearer, lancepilot_message
from tests.integration.test_delivery import attribute, dead_letters
from tests.integration.test_metrics import published, total
from tests.integration.test_possibly_delivered import log_lines, marker
from tests.property.openapi import answer_problems

PHONE = "+14155550123"  # lancepilot_message's recipient
TEXT = "Your order 1042 has shipped."  # and its text
NO_ANSWER = "lancepilot gave no answer in time"
PARKING_FAILED = "could not dead-letter an unanswered send; the caller may send it again"


def signed(body: bytes, msg_id: str) -> dict[str, str]:
    ts = int(time.time())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(SIGNING_SECRET, msg_id, ts, body),
    }


def records(aws) -> list[dict]:
    return aws.dynamodb.scan(TableName=aws.table, ConsistentRead=True)["Items"]


def assert_held(answer, provider: str = "lancepilot") -> None:
    assert answer.status == 504
    assert answer_problems(answer.status, answer.headers, answer.json) == []  # docs/openapi.yaml
    assert answer.json["status"] == "held"
    assert answer.json["provider"] == provider
    assert answer.json["message"].startswith(f"{provider} gave no answer in time")
    assert "may or may not" in answer.json["message"]


def assert_no_message_data(logs) -> None:
    out = logs.getvalue()
    assert PHONE not in out
    assert TEXT not in out


# --- held: answered 504, parked with its reason, kept -----------------------------------------


def test_an_unanswered_sync_send_is_held_in_the_dead_letter_queue(webhook, aws, lancepilot, logs):
    lancepilot.enqueue(Fault.hang(1.5))  # past the 0.5 s read timeout
    raw = json.dumps(lancepilot_message()).encode()

    answer = webhook.post(raw=raw, headers={**bearer(), "idempotency-key": "order-held-1"})

    assert_held(answer)
    assert "idempotent-replayed" not in answer.headers
    assert len(lancepilot.received) == 1
    assert lancepilot.received[0].relay_id == answer.json["id"]
    [parked] = dead_letters(aws)
    assert parked["Body"] == raw.decode()  # as the caller sent it, as an async request queues
    assert {name: attribute(parked, name) for name in parked["MessageAttributes"]} == {
        "ErrorKind": "exhausted",
        "ErrorMessage": answer.json["message"].removesuffix(", so it was not resent")
        + "; a synchronous request, answered 504 and not resent",
        "RelayId": answer.json["id"],
        "IdempotencyKey": "order-held-1",
        "PossiblyDelivered": "true",
        "QueuedBy": "webhook",
    }
    # The record is kept (COMPLETED), not deleted as after a failure; no marker is needed.
    [record] = records(aws)
    assert record["status"]["S"] == "COMPLETED"
    assert marker(aws, "order-held-1") is None
    [line] = log_lines(logs, "message dead-lettered")
    assert line["relay_id"] == answer.json["id"]
    assert (line["error_kind"], line["possibly_delivered"], line["queued_by"]) == (
        "exhausted",
        True,
        "webhook",
    )
    assert_no_message_data(logs)


def test_a_replay_with_the_same_idempotency_key_gets_the_same_504_and_is_not_sent(
    webhook, aws, lancepilot
):
    lancepilot.enqueue(Fault.hang(1.5))
    body = lancepilot_message()
    headers = {**bearer(), "idempotency-key": "order-held-2"}

    first = webhook.post(body, headers=headers)
    again = webhook.post(body, headers=headers)
    queued = webhook.post(body, headers={**headers, "prefer": "respond-async"})

    assert_held(first)
    assert (again.status, again.json) == (504, first.json)
    assert again.headers["idempotent-replayed"] == "true"
    assert answer_problems(again.status, again.headers, again.json) == []
    # Whichever way the repeat asks, the key's one record answers: not queued either.
    assert (queued.status, queued.json) == (504, first.json)
    assert queued.headers["idempotent-replayed"] == "true"
    assert len(lancepilot.received) == 1
    assert len(dead_letters(aws)) == 1
    assert aws.sqs.receive_message(QueueUrl=aws.queue_url).get("Messages", []) == []


def test_a_signed_replay_with_the_same_webhook_id_gets_the_same_504_and_is_not_sent(
    webhook, aws, lancepilot
):
    lancepilot.enqueue(Fault.reset_after_read())  # the provider read it, then the line dropped
    raw = json.dumps(lancepilot_message()).encode()
    headers = signed(raw, "msg_held_3")

    first = webhook.post(raw=raw, headers=headers)
    again = webhook.post(raw=raw, headers=headers)

    assert first.status == 504
    assert first.json["status"] == "held"
    assert "connection dropped" in first.json["message"]
    assert (again.status, again.json) == (504, first.json)
    assert again.headers["idempotent-replayed"] == "true"
    assert len(lancepilot.received) == 1
    [parked] = dead_letters(aws)
    assert attribute(parked, "IdempotencyKey") == "msg_held_3"
    assert attribute(parked, "RelayId") == first.json["id"]


def test_an_unkeyed_unanswered_send_is_held_too(webhook, aws, lancepilot, logs):
    lancepilot.enqueue(Fault.hang(1.5))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert_held(answer)
    [parked] = dead_letters(aws)
    assert attribute(parked, "RelayId") == answer.json["id"]
    assert attribute(parked, "PossiblyDelivered") == "true"
    assert attribute(parked, "QueuedBy") == "webhook"
    assert "IdempotencyKey" not in parked["MessageAttributes"]
    assert records(aws) == []  # no key, no record: nothing to replay
    assert_no_message_data(logs)


def test_a_held_message_is_counted_once_as_failed_and_its_replays_as_duplicates(
    webhook, lancepilot, capsys
):
    lancepilot.enqueue(Fault.hang(1.5))
    body = lancepilot_message(idempotency_key="order-held-metrics")
    capsys.readouterr()

    webhook.post(body, headers=bearer())
    webhook.post(body, headers=bearer())

    points = published(capsys)
    assert total(points, "AmbiguousSends", Provider="lancepilot") == 1
    assert total(points, "MessagesFailed", Provider="lancepilot", Reason="timeout") == 1
    assert total(points, "DuplicatesSuppressed", Provider="lancepilot") == 1


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault.status(422, {"message": "Validation error", "errors": {"number": ["no"]}}), 502),
        (Fault.status(503, retry_after="120"), 503),
    ],
    ids=["refused", "unavailable"],
)
def test_a_refusal_or_an_outage_is_not_held(webhook, aws, lancepilot, fault, status):
    # Nothing reached the provider, or it said no: the caller's retry is what is wanted.
    lancepilot.enqueue(fault)
    body = lancepilot_message(idempotency_key=f"order-not-held-{status}")

    failed = webhook.post(body, headers=bearer())
    retried = webhook.post(body, headers=bearer())

    assert (failed.status, retried.status) == (status, 201)
    assert "status" not in failed.json
    assert dead_letters(aws) == []
    assert len(lancepilot.received) == 2


# --- parking failed: as before, the key is freed ----------------------------------------------


def test_if_the_dead_letter_queue_is_down_the_504_frees_the_key_as_before(
    relay_env, failing_aws_call, aws, lancepilot, logs
):
    failing_aws_call("sqs.SendMessage")
    webhook = Webhook(load_function("webhook"))
    lancepilot.enqueue(Fault.hang(1.5))
    body = lancepilot_message(idempotency_key="order-held-down")

    failed = webhook.post(body, headers=bearer())
    retried = webhook.post(body, headers=bearer())

    assert failed.status == 504
    assert "status" not in failed.json  # not held: nothing parked it
    assert answer_problems(failed.status, failed.headers, failed.json) == []
    assert failed.json["message"].startswith(NO_ANSWER)
    assert dead_letters(aws) == []
    # The key's send is marked, so a later parking of another copy says PossiblyDelivered.
    assert marker(aws, "order-held-down") is not None
    assert (retried.status, retried.json["id"]) == (201, failed.json["id"])
    assert "idempotent-replayed" not in retried.headers
    assert len(lancepilot.received) == 2
    [line] = log_lines(logs, PARKING_FAILED)
    assert (line["relay_id"], line["error"]) == (failed.json["id"], "ClientError")
    assert_no_message_data(logs)


def test_without_a_dead_letter_queue_configured_the_504_frees_the_key_as_before(
    relay_env, monkeypatch, aws, lancepilot
):
    monkeypatch.delenv("DEAD_LETTER_QUEUE_URL")
    webhook = Webhook(load_function("webhook"))
    lancepilot.enqueue(Fault.hang(1.5))
    body = lancepilot_message(idempotency_key="order-held-none")

    failed = webhook.post(body, headers=bearer())
    retried = webhook.post(body, headers=bearer())

    assert (failed.status, "status" in failed.json) == (504, False)
    assert retried.status == 201
    assert dead_letters(aws) == []
    assert len(lancepilot.received) == 2


def test_a_failed_record_save_after_holding_still_answers_held(
    relay_env, failing_aws_call, aws, lancepilot
):
    # The message is parked; only the record of that could not be written.
    failing_aws_call("dynamodb.BatchWriteItem")
    webhook = Webhook(load_function("webhook"))
    lancepilot.enqueue(Fault.hang(1.5))

    answer = webhook.post(lancepilot_message(idempotency_key="order-held-save"), headers=bearer())

    assert_held(answer)
    assert len(dead_letters(aws)) == 1


# --- redriven by an operator: sent once, under its relay id -----------------------------------


def redrive(aws, capsys) -> str:
    """``relay dlq redrive --all`` as an operator who has checked with the provider runs it."""
    code = relay_tool(
        [
            "dlq",
            "redrive",
            "--all",
            "--yes",
            "--quiet",
            "--no-move-task",
            "--include-possibly-delivered",
            "--dlq-url",
            aws.dlq_url,
            "--queue-url",
            aws.queue_url,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_a_held_message_redriven_is_sent_once_under_its_relay_id(
    webhook, delivery, aws, lancepilot, capsys
):
    lancepilot.enqueue(Fault.hang(1.5))
    body = lancepilot_message(idempotency_key="order-held-redrive")
    held = webhook.post(body, headers=bearer())
    assert held.json["status"] == "held"
    [letter] = aws.sqs.receive_message(
        QueueUrl=aws.dlq_url, MessageAttributeNames=["All"], VisibilityTimeout=0
    )["Messages"]

    # Without --include-possibly-delivered the tool holds it back: the provider may have it.
    queues = ["--dlq-url", aws.dlq_url, "--queue-url", aws.queue_url]
    code = relay_tool(["dlq", "redrive", "--all", "--yes", "--quiet", *queues])
    assert code == 1
    assert "held back: 1 possibly delivered" in capsys.readouterr().out

    assert "moved 1" in redrive(aws, capsys)
    delivery.poll_once()

    [first, sent] = lancepilot.received
    assert (first.answered, sent.answered) == (None, 201)
    assert sent.relay_id == held.json["id"]
    assert sent.json == first.json  # the same message
    # The caller's key still answers with the 504 it was given: the record is the webhook's.
    again = webhook.post(body, headers=bearer())
    assert (again.status, again.json) == (504, held.json)

    # A second redrive of it (the letter was copied back, as after a redrive whose delete
    # failed) is recognised by its relay id and not sent again.
    aws.sqs.send_message(
        QueueUrl=aws.dlq_url,
        MessageBody=letter["Body"],
        MessageAttributes=letter["MessageAttributes"],
    )
    assert "moved 1" in redrive(aws, capsys)
    delivery.poll_once()

    assert len(lancepilot.received) == 2
    assert dead_letters(aws) == []
    assert aws.sqs.receive_message(QueueUrl=aws.queue_url).get("Messages", []) == []


def test_a_held_message_redriven_after_its_caller_had_it_delivered_is_not_sent_again(
    webhook, delivery, aws, lancepilot, capsys
):
    lancepilot.enqueue(Fault.hang(1.5))
    body = lancepilot_message(idempotency_key="order-held-then-retried")
    assert webhook.post(body, headers=bearer()).json["status"] == "held"
    # As when the parking's SendMessage timed out though SQS had the letter: the webhook then
    # answered a plain 504 and freed the key, and the caller's retry was delivered.
    for item in aws.dynamodb.scan(TableName=aws.table)["Items"]:
        aws.dynamodb.delete_item(TableName=aws.table, Key={"id": item["id"]})
    assert webhook.post(body, headers=bearer()).status == 201

    assert "moved 1" in redrive(aws, capsys)
    delivery.poll_once()

    assert [r.answered for r in lancepilot.received] == [None, 201]  # not a third time
    assert dead_letters(aws) == []
    assert aws.sqs.receive_message(QueueUrl=aws.queue_url).get("Messages", []) == []
