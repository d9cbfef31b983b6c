"""A send that got no answer: the delivery function remembers it (a marker in the idempotency
table) and a dead letter of that message says PossiblyDelivered, so a redrive does not resend it
unawares. So does a send cut off by a crash or the Lambda's timeout, which leaves only its
INPROGRESS record; and a receive past the last the function plans for parks the message with a
reason, sending nothing. Through the real handler, moto and the sandbox providers."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from botocore.exceptions import ClientError

from relay.idempotency import DELIVER, Idempotency, request_for
from relay.message import Defaults, parse_message
from relay_local.esm import EventSourceMapping
from relay_local.lambda_runtime import LambdaContext, load_function
from relay_local.sandbox import Fault
from tests.conftest import (
    Webhook,
    bearer,
    fluents_message,
    handler_session,
    lancepilot_message,
    received_records,
)
from tests.integration.test_delivery import attribute, dead_letters, send
from tests.integration.test_metrics import published, total

TTL = 14 * 24 * 3600  # IDEMPOTENCY_TTL_SECONDS' default: relay_env does not set it
REFUSAL = {"message": "Validation error", "errors": {"number": ["is not on WhatsApp"]}}
FLUENTS_REFUSAL = {"message": "to_number is invalid", "error": "Bad Request", "statusCode": 400}


def marker(aws, relay_id: str) -> dict | None:
    """The ambiguous-send marker for ``relay_id``, if the table has one."""
    key = {"id": {"S": f"webhook-relay#ambiguous#{relay_id}"}}
    return aws.dynamodb.get_item(TableName=aws.table, Key=key, ConsistentRead=True).get("Item")


def log_lines(logs, message: str | None) -> list[dict]:
    """The relay's log lines with this message (None: every line)."""
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if message is None or line.get("message") == message]


def mapping(aws) -> EventSourceMapping:
    """The delivery function, loaded now: after any botocore hook the test has registered."""
    handler = load_function("delivery").lambda_handler
    return EventSourceMapping(aws.sqs, aws.queue_url, handler, wait_seconds=0, timeout_s=30)


def received_as(aws, receive_count: int) -> dict:
    """The one queued message as the event source hands it over on this receive."""
    [record] = received_records(aws, 1)
    record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    return record


def cut_off_mid_send(aws, key: str, body: dict) -> None:
    """What a delivery leaves when its invocation dies mid-send (SIGKILL, the Lambda's timeout):
    the INPROGRESS record Powertools wrote before the send, its in-progress time over, and no
    marker. Written by Powertools' own persistence layer, set up as the relay sets up its own."""
    store = DynamoDBPersistenceLayer(table_name=aws.table, boto3_client=aws.dynamodb)
    config = Idempotency(boto3.session.Session(), aws.table, TTL).config
    store.configure(config, key_prefix=DELIVER)
    request = request_for(key, parse_message(body, Defaults()))
    store.save_inprogress(request, remaining_time_in_millis=0)  # the invocation's time is up


def queued_then_cut_off(aws, relay_id: str, body: dict) -> None:
    """``body`` queued under ``relay_id``, received once by an invocation that died mid-send,
    and visible again at once, as when its visibility timeout has ended."""
    send(aws, body, RelayId=relay_id)
    [dead] = received_records(aws, 1)
    cut_off_mid_send(aws, relay_id, body)
    aws.sqs.change_message_visibility(
        QueueUrl=aws.queue_url, ReceiptHandle=dead["receiptHandle"], VisibilityTimeout=0
    )


@pytest.fixture
def dynamodb_calls(relay_env):
    """The DynamoDB operations the handlers make, in order (clients created after this)."""
    calls: list[str] = []

    def seen(model, **_):
        calls.append(model.name)

    events = handler_session().events
    events.register("before-call.dynamodb", seen)
    yield calls
    events.unregister("before-call.dynamodb", seen)


@pytest.fixture
def failing_marker_write(relay_env):
    """PutItem of a marker fails (Powertools' own PutItems go through), for clients made after."""

    def fail(params, **_):
        if params["Item"]["id"]["S"].startswith("webhook-relay#ambiguous#"):
            raise ClientError({"Error": {"Code": "InternalServerError"}}, "PutItem")

    events = handler_session().events
    events.register("before-parameter-build.dynamodb.PutItem", fail)
    yield
    events.unregister("before-parameter-build.dynamodb.PutItem", fail)


# --- parked after an ambiguous send ----------------------------------------------------------


def test_an_unanswered_send_then_a_refusal_is_parked_as_possibly_delivered(
    delivery, aws, lancepilot, logs
):
    lancepilot.enqueue(Fault.hang(1.5), Fault.status(422, REFUSAL))
    send(aws, lancepilot_message(), RelayId="relay-a")

    first = delivery.poll_once()  # no answer within the read timeout: handed back
    written = marker(aws, "relay-a")
    time.sleep(1.1)  # the first receive's backoff (REDELIVERY_BASE_SECONDS=1)
    delivery.drain(idle_seconds=1.5, limit_s=10)

    assert first.failed
    assert written is not None
    assert abs(int(written["expiration"]["N"]) - (time.time() + TTL)) < 60
    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "permanent"
    assert attribute(parked, "ErrorStatus") == "422"
    assert parked["MessageAttributes"]["PossiblyDelivered"] == {
        "DataType": "String",
        "StringValue": "true",
    }
    assert [r.answered for r in lancepilot.received] == [None, 422]
    [line] = log_lines(logs, "message dead-lettered")
    assert (line["relay_id"], line["possibly_delivered"]) == ("relay-a", True)


def test_another_copy_with_the_same_key_is_flagged_too(delivery, aws, lancepilot):
    # A producer's retry: two messages, one key. The first copy's send goes unanswered; the
    # second is refused and parked: the provider may have the first, the same message.
    lancepilot.enqueue(Fault.hang(1.5), Fault.status(422, REFUSAL))
    send(aws, lancepilot_message(idempotency_key="order-7"), RelayId="copy-a")
    assert delivery.poll_once().failed  # handed back, with a backoff of at least 1 s
    send(aws, lancepilot_message(idempotency_key="order-7"), RelayId="copy-b")

    delivery.poll_once()  # only the second copy is visible yet

    [parked] = dead_letters(aws)
    assert attribute(parked, "RelayId") == "copy-b"
    assert attribute(parked, "ErrorKind") == "permanent"
    assert attribute(parked, "PossiblyDelivered") == "true"
    assert marker(aws, "order-7") is not None
    assert marker(aws, "copy-a") is None  # kept under the key, as the delivery would be


def test_a_refusal_without_an_unanswered_send_is_not_possibly_delivered(
    dynamodb_calls, aws, fluents, logs
):
    fluents.set_default(Fault.status(400, FLUENTS_REFUSAL))
    send(aws, fluents_message(), RelayId="relay-b")

    mapping(aws).poll_once()

    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "permanent"
    assert "PossiblyDelivered" not in parked["MessageAttributes"]
    assert marker(aws, "relay-b") is None
    assert dynamodb_calls.count("GetItem") == 1  # the marker, read once, only to park
    [line] = log_lines(logs, "message dead-lettered")
    assert line["possibly_delivered"] is False


def test_a_delivered_message_reads_no_marker(dynamodb_calls, aws, fluents):
    send(aws, fluents_message())

    assert mapping(aws).poll_once().failed == []
    assert "GetItem" not in dynamodb_calls


def test_exhausted_after_an_unanswered_send_is_possibly_delivered(delivery, aws, lancepilot):
    # The unanswered send on the first receive; the last receive's error is a plain 503.
    lancepilot.enqueue(Fault.reset_after_read())
    lancepilot.set_default(Fault.status(503))
    send(aws, lancepilot_message(), RelayId="relay-c")

    delivery.drain(idle_seconds=2.2, limit_s=20)  # MAX_RECEIVE_COUNT=3 in the test environment

    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "exhausted"
    assert attribute(parked, "ErrorStatus") == "503"
    assert attribute(parked, "PossiblyDelivered") == "true"
    assert lancepilot.received[0].answered is None


def test_unanswered_on_the_last_receive_is_possibly_delivered_with_no_marker(
    relay_env, aws, lancepilot
):
    # Ten attributes of the producer's own: the reason's still take precedence.
    producer = {f"Producer{i}": str(i) for i in range(10)}
    lancepilot.enqueue(Fault.hang(1.0))
    send(aws, lancepilot_message(), **producer)
    handler = load_function("delivery").lambda_handler

    answer = handler({"Records": [received_as(aws, aws.max_receive_count)]}, LambdaContext())

    assert answer == {"batchItemFailures": []}
    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "exhausted"
    assert attribute(parked, "PossiblyDelivered") == "true"  # its own send went unanswered
    assert len(parked["MessageAttributes"]) == 10
    # No later receive will need a marker: none is written (one AWS call less, late in time).
    assert aws.dynamodb.scan(TableName=aws.table)["Items"] == []


def test_a_marker_that_cannot_be_written_changes_nothing_else(
    failing_marker_write, aws, lancepilot, logs
):
    lancepilot.enqueue(Fault.hang(1.0))
    send(aws, lancepilot_message())
    [record] = received_records(aws, 1)
    handler = load_function("delivery").lambda_handler

    answer = handler({"Records": [record]}, LambdaContext())

    assert answer == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    assert aws.dynamodb.scan(TableName=aws.table)["Items"] == []
    [failed] = log_lines(logs, "could not record the ambiguous send")
    assert failed["error"] == "ClientError"
    assert "14155550123" not in logs.getvalue()  # no message data


def test_a_marker_that_cannot_be_read_counts_as_possibly_delivered(
    relay_env, failing_aws_call, aws, fluents, logs
):
    failing_aws_call("dynamodb.GetItem")  # Powertools reads nothing for a new key: the marker's
    fluents.set_default(Fault.status(400, FLUENTS_REFUSAL))
    send(aws, fluents_message(), RelayId="relay-d")

    mapping(aws).poll_once()

    [parked] = dead_letters(aws)
    assert attribute(parked, "PossiblyDelivered") == "true"  # the safe side: a redrive waits
    [unread] = [line for line in log_lines(logs, None) if "marker" in line["message"]]
    assert unread["level"] == "WARNING"


@pytest.mark.parametrize(("carried", "parked_with"), [("true", "true"), ("false", None)])
def test_a_redriven_letter_keeps_its_own_flag_and_no_other(
    delivery, aws, fluents, carried, parked_with
):
    fluents.set_default(Fault.status(400, FLUENTS_REFUSAL))
    send(aws, fluents_message(), RelayId="relay-e", PossiblyDelivered=carried)

    delivery.poll_once()

    [parked] = dead_letters(aws)
    assert attribute(parked, "PossiblyDelivered") == parked_with


def test_a_failed_record_delete_after_an_unanswered_send_still_leaves_the_marker(
    relay_env, failing_aws_call, aws, lancepilot, logs
):
    # The send's outcome (no answer) must not be lost to "the store is unavailable".
    failing_aws_call("dynamodb.DeleteItem")
    lancepilot.enqueue(Fault.hang(1.0))
    message_id = send(aws, lancepilot_message(), RelayId="relay-f")
    handler = load_function("delivery").lambda_handler

    answer = handler({"Records": received_records(aws, 1)}, LambdaContext())

    assert answer == {"batchItemFailures": [{"itemIdentifier": message_id}]}
    assert marker(aws, "relay-f") is not None
    assert log_lines(logs, "ambiguous send will be retried")


# --- a send cut off by a crash or the Lambda's timeout ----------------------------------------


def test_a_send_cut_off_mid_flight_then_a_refusal_is_parked_as_possibly_delivered(
    delivery, aws, lancepilot, logs
):
    # Receive 1's invocation died mid-send: the message comes back when its visibility timeout
    # ends. Receive 2 takes the record over and meets 503s (the failure deletes the record);
    # receive 3, the last, a refusal. Only the marker written on receive 2 can tell it.
    lancepilot.enqueue(*[Fault.status(503)] * 4, Fault.status(422, REFUSAL))
    body = lancepilot_message()
    queued_then_cut_off(aws, "relay-g", body)

    delivery.drain(idle_seconds=2.2, limit_s=20)

    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "permanent"
    assert attribute(parked, "PossiblyDelivered") == "true"
    assert [r.answered for r in lancepilot.received] == [503] * 4 + [422]
    assert marker(aws, "relay-g") is not None
    [seen] = log_lines(logs, "an earlier send may have gone out unanswered")
    assert (seen["relay_id"], seen["level"]) == ("relay-g", "WARNING")
    [line] = log_lines(logs, "message dead-lettered")
    assert (line["possibly_delivered"], line["receive_count"]) == (True, 3)


def test_a_send_cut_off_mid_flight_is_counted_as_ambiguous_when_its_redelivery_finds_it(
    delivery, aws, lancepilot, capsys
):
    # Only the redelivery learns that the dead invocation's send may have gone out: it counts
    # the ambiguous send (the resend it makes may be a duplicate) and delivers.
    body = lancepilot_message()
    queued_then_cut_off(aws, "relay-m", body)
    capsys.readouterr()

    delivery.drain(idle_seconds=1.2, limit_s=20)

    points = published(capsys)
    assert total(points, "AmbiguousSends", Provider="lancepilot") == 1
    assert total(points, "MessagesDelivered", Provider="lancepilot") == 1
    assert [r.answered for r in lancepilot.received] == [201]
    assert dead_letters(aws) == []


def test_a_redelivery_with_no_record_left_reads_it_once_and_is_not_flagged(
    dynamodb_calls, aws, fluents
):
    # An earlier receive was handed back the ordinary way: its failure deleted its record.
    fluents.set_default(Fault.status(400, FLUENTS_REFUSAL))
    send(aws, fluents_message(), RelayId="relay-h")

    answer = mapping(aws).handler({"Records": [received_as(aws, 2)]}, LambdaContext())

    assert answer == {"batchItemFailures": []}
    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "permanent"
    assert "PossiblyDelivered" not in parked["MessageAttributes"]
    assert dynamodb_calls.count("GetItem") == 2  # the record before the send, the marker after
    assert marker(aws, "relay-h") is None


# --- past the last receive: an earlier invocation ended without an outcome --------------------


@pytest.mark.parametrize(("cut_off", "flagged"), [(False, None), (True, "true")])
def test_a_receive_past_the_last_parks_with_the_reason_and_sends_nothing(
    relay_env, aws, lancepilot, cut_off, flagged
):
    body = lancepilot_message()
    send(aws, body, RelayId="relay-i")
    if cut_off:  # the last receive's invocation died mid-send
        cut_off_mid_send(aws, "relay-i", body)
    past = aws.max_receive_count + 1
    handler = load_function("delivery").lambda_handler

    answer = handler({"Records": [received_as(aws, past)]}, LambdaContext())

    assert answer == {"batchItemFailures": []}
    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "exhausted"
    assert attribute(parked, "ErrorStatus") is None
    assert attribute(parked, "ErrorMessage") == (
        f"gave up after {past} receives: an earlier invocation ended without an outcome "
        "(timeout or crash)"
    )
    assert attribute(parked, "PossiblyDelivered") == flagged
    assert lancepilot.received == []


def test_a_receive_past_the_last_with_an_unreadable_record_is_possibly_delivered(
    relay_env, failing_aws_call, aws, lancepilot
):
    failing_aws_call("dynamodb.GetItem")
    send(aws, lancepilot_message())
    handler = load_function("delivery").lambda_handler

    handler({"Records": [received_as(aws, aws.max_receive_count + 1)]}, LambdaContext())

    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "exhausted"
    assert attribute(parked, "PossiblyDelivered") == "true"  # the safe side: a redrive waits
    assert lancepilot.received == []


def test_a_delivered_message_received_past_the_last_is_deleted_unsent(relay_env, aws, lancepilot):
    # Delivered, then its invocation timed out before the event source deleted the message.
    send(aws, lancepilot_message())
    [record] = received_records(aws, 1)
    handler = load_function("delivery").lambda_handler
    assert handler({"Records": [record]}, LambdaContext()) == {"batchItemFailures": []}
    record["attributes"]["ApproximateReceiveCount"] = str(aws.max_receive_count + 1)

    answer = handler({"Records": [record]}, LambdaContext())

    assert answer == {"batchItemFailures": []}  # the event source deletes it
    assert len(lancepilot.received) == 1
    assert dead_letters(aws) == []


def test_an_unanswered_send_whose_parking_failed_is_flagged_past_the_last_receive(
    relay_env, failing_aws_call, aws, lancepilot
):
    # The last receive's send goes unanswered and its dead-letter send fails: handed back. The
    # receive after it, which the queue allows, has only the marker to go by.
    failing_aws_call("sqs.SendMessage")
    lancepilot.enqueue(Fault.hang(1.0))
    message_id = send(aws, lancepilot_message(), RelayId="relay-j")
    handler = load_function("delivery").lambda_handler
    [record] = received_records(aws, 1)
    record["attributes"]["ApproximateReceiveCount"] = str(aws.max_receive_count)

    handed_back = handler({"Records": [record]}, LambdaContext())
    record["attributes"]["ApproximateReceiveCount"] = str(aws.max_receive_count + 1)
    answer = handler({"Records": [record]}, LambdaContext())

    assert handed_back == {"batchItemFailures": [{"itemIdentifier": message_id}]}
    assert marker(aws, "relay-j") is not None
    assert answer == {"batchItemFailures": []}
    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "exhausted"
    assert attribute(parked, "PossiblyDelivered") == "true"
    assert len(lancepilot.received) == 1


def test_the_http_path_parks_an_unanswered_send_flagged_and_leaves_no_marker(
    webhook, aws, lancepilot
):
    lancepilot.enqueue(Fault.hang(1.0))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 504  # the caller is told; nothing is resent
    assert answer.json["status"] == "held"  # parked: the dead letter itself says so
    [parked] = dead_letters(aws)
    assert attribute(parked, "PossiblyDelivered") == "true"
    assert aws.dynamodb.scan(TableName=aws.table)["Items"] == []


def test_a_failed_record_delete_after_an_unanswered_send_is_still_504_on_http(
    relay_env, failing_aws_call, aws, lancepilot
):
    # The dead-letter queue cannot take it (so the failure frees the key, as before the
    # webhook held such sends), and then the record's delete fails too.
    failing_aws_call("sqs.SendMessage")
    failing_aws_call("dynamodb.DeleteItem")
    webhook = Webhook(load_function("webhook"))
    lancepilot.enqueue(Fault.hang(1.0))

    answer = webhook.post(lancepilot_message(idempotency_key="k-1"), headers=bearer())

    assert answer.status == 504  # the provider may have it: not a 503 inviting a retry
    assert "status" not in answer.json  # not held: nothing parked it
    assert marker(aws, "k-1") is not None
