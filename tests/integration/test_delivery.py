"""The delivery function on a (moto) SQS queue: batches, failures, dead letters, idempotency."""

from __future__ import annotations

import json
import time

import pytest

from relay_local.esm import EventSourceMapping
from relay_local.lambda_runtime import LambdaContext, load_function
from relay_local.sandbox import Fault
from tests.conftest import fluents_message, lancepilot_message, load_event, received_records


def send(aws, body, **attributes: str) -> str:
    """Put a message on the delivery queue as any producer would; its message id."""
    return aws.sqs.send_message(
        QueueUrl=aws.queue_url,
        MessageBody=body if isinstance(body, str) else json.dumps(body),
        MessageAttributes={
            k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()
        },
    )["MessageId"]


def dead_letters(aws) -> list[dict]:
    found = []
    while batch := aws.sqs.receive_message(
        QueueUrl=aws.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", []):
        found += batch
        for message in batch:
            aws.sqs.delete_message(QueueUrl=aws.dlq_url, ReceiptHandle=message["ReceiptHandle"])
    return found


def attribute(message: dict, name: str) -> str | None:
    value = message.get("MessageAttributes", {}).get(name)
    return value["StringValue"] if value else None


def waiting(aws) -> int:
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=aws.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


# --- delivered -------------------------------------------------------------------------------


def test_a_mixed_batch_is_delivered_per_provider(delivery, aws, lancepilot, fluents):
    for i in range(3):
        send(aws, lancepilot_message(text=f"lp {i}"))
        send(aws, fluents_message(text=f"fl {i}"))

    result = delivery.poll_once()

    assert (result.received, result.failed) == (6, [])
    assert sorted(r.json["text"]["body"] for r in lancepilot.accepted()) == ["lp 0", "lp 1", "lp 2"]
    assert sorted(r.json["message"] for r in fluents.accepted()) == ["fl 0", "fl 1", "fl 2"]
    assert waiting(aws) == 0
    assert dead_letters(aws) == []


def test_the_relay_id_goes_to_the_provider_and_a_producers_odd_one_is_not_used(
    delivery, aws, lancepilot
):
    plain = send(aws, lancepilot_message(text="plain"), RelayId="relay-9")
    odd = send(aws, lancepilot_message(text="odd"), RelayId="evil\r\nX-Injected: 1" + "x" * 300)
    unset = send(aws, lancepilot_message(text="unset"))

    result = delivery.poll_once()

    assert result.failed == []
    sent = {r.json["text"]["body"]: r.relay_id for r in lancepilot.accepted()}
    # The RelayId attribute when it is a plain id; else, as when unset, the SQS message id.
    assert sent == {"plain": "relay-9", "odd": odd, "unset": unset}
    assert plain != "relay-9"


def test_the_sample_mixed_batch_event(delivery, aws, lancepilot, fluents):
    event = load_event("sqs_mixed_batch.json")

    answer = delivery.handler(event, LambdaContext())

    assert answer == {"batchItemFailures": []}
    assert len(lancepilot.accepted()) == 1
    assert len(fluents.accepted()) == 1
    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "invalid"


def test_the_sample_poison_message_is_parked_with_its_reason(delivery, aws, lancepilot, fluents):
    event = load_event("sqs_poison_message.json")

    answer = delivery.handler(event, LambdaContext())

    assert answer == {"batchItemFailures": []}
    [parked] = dead_letters(aws)
    assert parked["Body"] == event["Records"][0]["body"]
    assert attribute(parked, "ErrorKind") == "invalid"
    assert lancepilot.received == []
    assert fluents.received == []


def test_defaults_apply_to_queued_messages_too(relay_env, monkeypatch, aws, fluents):
    monkeypatch.setenv("DEFAULT_PROVIDER", "fluents")
    monkeypatch.setenv("FLUENTS_FROM_NUMBER", "+12025550143")
    handler = load_function("delivery").lambda_handler
    send(aws, {"to": "+14155550123", "text": "hi"})
    event = {"Records": received_records(aws, 1)}

    assert handler(event, LambdaContext()) == {"batchItemFailures": []}
    assert fluents.accepted()[0].json["from_number"] == "+12025550143"


# --- failures ---------------------------------------------------------------------------------


def test_transient_failure_returns_exactly_that_record(delivery, aws, lancepilot, fluents):
    lancepilot.set_default(Fault.status(503))
    failing = send(aws, lancepilot_message())
    send(aws, fluents_message())

    result = delivery.poll_once()

    assert result.failed == [failing]
    assert len(fluents.accepted()) == 1
    assert waiting(aws) == 1  # the Lancepilot message, invisible for its backoff
    assert dead_letters(aws) == []


def test_backoff_by_receive_count_keeps_the_message_away_then_brings_it_back(
    delivery, aws, lancepilot
):
    lancepilot.enqueue(Fault.status(503), Fault.status(503), Fault.status(503), Fault.status(503))
    send(aws, lancepilot_message())

    assert delivery.poll_once().failed  # receive 1: backoff of 1 s (REDELIVERY_BASE_SECONDS)
    assert delivery.poll_once() is None  # not visible yet
    time.sleep(1.1)
    second = aws.sqs.receive_message(
        QueueUrl=aws.queue_url, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"][0]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"


def test_retry_after_sets_the_redelivery_delay(delivery, aws, lancepilot):
    lancepilot.set_default(Fault.status(429, retry_after="120"))
    send(aws, lancepilot_message())

    assert delivery.poll_once().failed
    time.sleep(2.5)  # past any backoff of the first receive (1 s), well short of 120 s

    assert delivery.poll_once() is None
    assert len(lancepilot.received) == 1  # 120 s did not fit the send budget: no wait in-process


def test_provider_refusal_goes_to_the_dead_letter_queue_with_its_reason(delivery, aws, fluents):
    fluents.set_default(
        Fault.status(
            400,
            {
                "message": "to_number must be a mobile number",
                "error": "Bad Request",
                "statusCode": 400,
            },
        )
    )
    body = json.dumps(fluents_message())
    message_id = send(aws, body, RelayId="relay-1")

    result = delivery.poll_once()

    assert result.failed == []  # handled: parked, not retried
    [parked] = dead_letters(aws)
    assert parked["Body"] == body  # unchanged
    assert attribute(parked, "ErrorKind") == "permanent"
    assert attribute(parked, "ErrorStatus") == "400"
    assert "to_number must be a mobile number" in attribute(parked, "ErrorMessage")
    assert attribute(parked, "RelayId") == "relay-1"
    assert len(fluents.received) == 1
    assert message_id not in result.failed
    assert waiting(aws) == 0


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"provider": "sms", "to": "12", "text": ""}), "provider"),
        (json.dumps(lancepilot_message(colour="blue")), "colour: unknown field"),
    ],
)
def test_invalid_bodies_are_parked_as_invalid_without_a_send(
    delivery, aws, lancepilot, body, named
):
    send(aws, body)

    result = delivery.poll_once()

    assert result.failed == []
    [parked] = dead_letters(aws)
    assert parked["Body"] == body
    assert attribute(parked, "ErrorKind") == "invalid"
    assert attribute(parked, "ErrorStatus") is None
    assert named in attribute(parked, "ErrorMessage")
    assert lancepilot.received == []


def test_a_parked_message_keeps_its_own_key_when_the_reason_has_none(delivery, aws, lancepilot):
    # An unparseable body has no key of its own: the producer's IdempotencyKey must survive,
    # and a redriven message's old reason must not.
    send(aws, "{not json", IdempotencyKey="producer-key", ErrorKind="permanent")

    delivery.poll_once()

    [parked] = dead_letters(aws)
    assert attribute(parked, "IdempotencyKey") == "producer-key"
    assert attribute(parked, "ErrorKind") == "invalid"
    assert lancepilot.received == []


def test_last_allowed_receive_parks_the_message_as_exhausted(delivery, aws, lancepilot):
    lancepilot.set_default(Fault.status(503))
    send(aws, lancepilot_message())

    delivery.drain(idle_seconds=2.2, limit_s=20)  # MAX_RECEIVE_COUNT=3 in the test environment

    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "exhausted"
    assert attribute(parked, "ErrorStatus") == "503"
    assert "gave up after 3 receives" in attribute(parked, "ErrorMessage")
    assert len(lancepilot.received) == 3 * 4  # three receives, four attempts each
    assert waiting(aws) == 0


def test_ambiguous_timeouts_are_retried_on_this_path(delivery, aws, lancepilot):
    lancepilot.enqueue(Fault.hang(1.5))
    send(aws, lancepilot_message())

    first = delivery.poll_once()
    time.sleep(1.1)
    delivery.drain(idle_seconds=2.5, limit_s=10)

    assert first.failed
    assert len(lancepilot.accepted()) == 1  # at least once beats lost
    assert dead_letters(aws) == []


def test_a_message_is_never_deleted_without_a_home(relay_env, monkeypatch, aws, fluents):
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", aws.dlq_url + "-missing")
    handler = load_function("delivery").lambda_handler
    fluents.set_default(
        Fault.status(404, {"message": "no", "error": "Not Found", "statusCode": 404})
    )
    message_id = send(aws, fluents_message())
    event = {"Records": received_records(aws, 1)}

    answer = handler(event, LambdaContext())

    assert answer == {"batchItemFailures": [{"itemIdentifier": message_id}]}


def test_records_that_cannot_finish_in_time_are_handed_back_unsent(
    relay_env, aws, lancepilot, delivery
):
    for i in range(3):
        send(aws, lancepilot_message(text=str(i)))
    delivery.timeout_s = 2.5  # less than the margin plus one whole attempt

    result = delivery.poll_once()

    assert len(result.failed) == 3
    assert lancepilot.received == []


# --- concurrency -------------------------------------------------------------------------------


def test_a_batch_is_sent_concurrently(relay_env, monkeypatch, aws, lancepilot, fluents):
    # Answers slow enough that all five sends to a provider overlap even on a loaded machine,
    # with a read timeout to match (the tests' 0.5 s would cut them off).
    monkeypatch.setenv("HTTP_READ_TIMEOUT", "5")
    handler = load_function("delivery").lambda_handler
    lancepilot.latency = fluents.latency = 1.0
    try:
        for i in range(5):
            send(aws, lancepilot_message(text=str(i)))
            send(aws, fluents_message(text=str(i)))
        answer = handler({"Records": received_records(aws, 10)}, LambdaContext())
    finally:
        lancepilot.latency = fluents.latency = 0.0
    assert answer == {"batchItemFailures": []}
    # All ten at the providers at once (counted there): none waited for another's answer. Not
    # a clock check: arrival times spread with the machine's load, the overlap does not.
    assert (lancepilot.peak_in_flight, fluents.peak_in_flight) == (5, 5)


def test_concurrency_is_bounded_per_provider(relay_env, monkeypatch, aws, lancepilot, fluents):
    monkeypatch.setenv("PROVIDER_CONCURRENCY", "2")
    handler = load_function("delivery").lambda_handler
    lancepilot.latency = 0.2
    try:
        for i in range(6):
            send(aws, lancepilot_message(text=str(i)))
        send(aws, fluents_message())
        records = received_records(aws, 7)
        answer = handler({"Records": records}, LambdaContext())
    finally:
        lancepilot.latency = 0.0
    assert answer == {"batchItemFailures": []}
    assert lancepilot.peak_in_flight == 2
    assert len(lancepilot.accepted()) == 6
    # A slow provider does not hold the other up: Fluents was sent during Lancepilot's first
    # round, not after its three.
    first_round = min(r.at for r in lancepilot.received)
    assert fluents.received[0].at < first_round + 0.2
    assert max(r.at for r in lancepilot.received) - first_round >= 0.35


def test_a_record_without_an_id_fails_the_batch_before_anything_is_sent(relay_env, aws, lancepilot):
    # Without its id a record cannot be reported alone: SQS must bring the whole batch back,
    # and no send may be left running after the handler has raised.
    handler = load_function("delivery").lambda_handler
    for i in range(3):
        send(aws, lancepilot_message(text=str(i)))
    records = received_records(aws, 3)
    del records[2]["messageId"]

    with pytest.raises(KeyError):
        handler({"Records": records}, LambdaContext())
    time.sleep(0.5)  # a send left running would have reached the provider by now

    assert lancepilot.received == []


# --- idempotency ------------------------------------------------------------------------------


def test_a_redriven_message_is_not_sent_twice(delivery, aws, lancepilot):
    send(aws, lancepilot_message(), RelayId="relay-42")
    delivery.poll_once()
    send(aws, lancepilot_message(), RelayId="relay-42")  # a redrive: new message id, same RelayId

    result = delivery.poll_once()

    assert result.failed == []
    assert len(lancepilot.accepted()) == 1
    assert waiting(aws) == 0


def test_the_body_idempotency_key_spans_messages(delivery, aws, lancepilot):
    send(aws, lancepilot_message(idempotency_key="order-1042-shipped"))
    send(aws, lancepilot_message(idempotency_key="order-1042-shipped"))

    delivery.drain()

    assert len(lancepilot.accepted()) == 1


def test_same_key_for_another_message_is_parked_as_invalid(delivery, aws, lancepilot):
    send(aws, lancepilot_message(idempotency_key="k-1"))
    delivery.poll_once()
    send(aws, lancepilot_message(idempotency_key="k-1", text="something else"))

    delivery.poll_once()

    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "invalid"
    assert "idempotency_key" in attribute(parked, "ErrorMessage")
    assert len(lancepilot.accepted()) == 1


def test_a_refused_message_can_be_sent_again_after_a_fix(delivery, aws, lancepilot):
    lancepilot.enqueue(Fault.status(404, {"message": "Resource not found.", "status": 404}))
    send(aws, lancepilot_message(), RelayId="relay-7")
    delivery.poll_once()
    [parked] = dead_letters(aws)

    # The operator fixes the cause and redrives the dead letter, attributes and all.
    aws.sqs.send_message(
        QueueUrl=aws.queue_url,
        MessageBody=parked["Body"],
        MessageAttributes=parked["MessageAttributes"],
    )
    delivery.poll_once()

    assert len(lancepilot.accepted()) == 1


def test_an_unsaved_success_record_does_not_send_the_message_again(
    relay_env, failing_aws_call, aws, lancepilot
):
    failing_aws_call("dynamodb.BatchWriteItem")
    delivery = EventSourceMapping(
        aws.sqs, aws.queue_url, load_function("delivery").lambda_handler, wait_seconds=0
    )
    send(aws, lancepilot_message())

    result = delivery.poll_once()

    assert result.failed == []  # delivered, though its record could not be saved
    assert len(lancepilot.received) == 1
    assert waiting(aws) == 0


def test_two_messages_with_one_key_in_one_batch_are_sent_once(relay_env, aws, lancepilot):
    # Both in one batch, on two threads at once: the conditional write lets one through.
    delivery = EventSourceMapping(
        aws.sqs, aws.queue_url, load_function("delivery").lambda_handler, wait_seconds=0
    )
    send(aws, lancepilot_message(idempotency_key="same"))
    send(aws, lancepilot_message(idempotency_key="same"))

    delivery.drain(idle_seconds=2.2, limit_s=10)

    assert len(lancepilot.accepted()) == 1
    assert dead_letters(aws) == []
    assert waiting(aws) == 0


def test_out_of_time_on_the_last_receive_parks_with_the_reason(
    relay_env, aws, lancepilot, delivery
):
    send(aws, lancepilot_message())
    delivery.timeout_s = 2.5  # never enough time for a send
    delivery.drain(idle_seconds=2.2, limit_s=15)

    [parked] = dead_letters(aws)
    assert attribute(parked, "ErrorKind") == "exhausted"
    assert "ran out of time" in attribute(parked, "ErrorMessage")
    assert lancepilot.received == []


def test_failing_to_park_on_the_last_receive_hands_the_message_back(
    relay_env, monkeypatch, aws, lancepilot
):
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", aws.dlq_url + "-missing")
    handler = load_function("delivery").lambda_handler
    lancepilot.set_default(Fault.status(503))
    message_id = send(aws, lancepilot_message())
    [record] = received_records(aws, 1)
    record["attributes"]["ApproximateReceiveCount"] = str(aws.max_receive_count)

    answer = handler({"Records": [record]}, LambdaContext())

    assert answer == {"batchItemFailures": [{"itemIdentifier": message_id}]}


def test_a_redriven_dead_letter_keeps_only_its_new_reason(delivery, aws, lancepilot):
    lancepilot.set_default(Fault.status(503))
    send(aws, lancepilot_message())
    delivery.drain(idle_seconds=2.2, limit_s=15)
    [first] = dead_letters(aws)
    lancepilot.set_default(Fault.status(422, {"message": "Validation error", "errors": {}}))

    aws.sqs.send_message(
        QueueUrl=aws.queue_url,
        MessageBody=first["Body"],
        MessageAttributes=first["MessageAttributes"],
    )
    delivery.poll_once()

    [second] = dead_letters(aws)
    assert attribute(second, "ErrorKind") == "permanent"
    assert attribute(second, "ErrorStatus") == "422"
    assert "gave up" not in attribute(second, "ErrorMessage")


def test_a_cold_batch_reads_the_provider_tokens_once(
    relay_env, aws, lancepilot, fluents, secret_reads
):
    # Ten sends start together on a cold cache: one GetSecretValue, not one per thread.
    secret_reads.delay = 0.05
    handler = load_function("delivery").lambda_handler
    delivery = EventSourceMapping(aws.sqs, aws.queue_url, handler, wait_seconds=0)
    for i in range(5):
        send(aws, lancepilot_message(text=f"lp {i}"))
        send(aws, fluents_message(text=f"fl {i}"))

    result = delivery.poll_once()

    assert (result.received, result.failed) == (10, [])
    assert secret_reads.asked == ["webhook-relay/provider-tokens"]


def test_secrets_manager_down_costs_a_cold_batch_one_attempt(
    relay_env, aws, lancepilot, secret_reads
):
    # After a failed fetch the store fails calls at once for a while, rather than each trying.
    secret_reads.delay, secret_reads.down = 0.05, True
    handler = load_function("delivery").lambda_handler
    delivery = EventSourceMapping(aws.sqs, aws.queue_url, handler, wait_seconds=0)
    ids = [send(aws, lancepilot_message(text=f"lp {i}")) for i in range(10)]

    result = delivery.poll_once()

    assert sorted(result.failed) == sorted(ids)  # every message comes back, none parked
    assert secret_reads.asked == ["webhook-relay/provider-tokens"]
    assert lancepilot.received == []
    assert dead_letters(aws) == []
