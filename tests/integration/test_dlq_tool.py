"""`relay dlq list|show|redrive` against moto, through the tool's real entry point."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from moto import mock_aws

from relay_local.sandbox import Fault
from relay_ops import dlq
from relay_ops.cli import main
from tests.conftest import lancepilot_message

PHONE = "+14155550123"  # lancepilot_message's recipient: must never show in list output


@dataclass
class Queues:
    sqs: Any
    queue_url: str
    dlq_url: str


@pytest.fixture
def queues(request):
    """The two queues; the whole stack (conftest's ``aws``) only for tests that deliver.

    Creating the table and secrets for every test would take most of this file's time.
    """
    if "aws" in request.fixturenames:
        yield request.getfixturevalue("aws")
        return
    with mock_aws():
        sqs = boto3.client("sqs")
        dlq_url = sqs.create_queue(QueueName="webhook-relay-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": 5}
        queue_url = sqs.create_queue(
            QueueName="webhook-relay-delivery",
            Attributes={"RedrivePolicy": json.dumps(redrive)},
        )["QueueUrl"]
        yield Queues(sqs, queue_url, dlq_url)


@pytest.fixture
def relay(queues, capsys):
    """Run ``relay dlq ...`` with the test queues; (exit code, stdout, stderr)."""

    def run(*argv: str, urls: bool = True):
        where = ["--dlq-url", queues.dlq_url, "--queue-url", queues.queue_url] if urls else []
        code = main(["dlq", *argv, *where])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def park(queues, body, kind, status=None, error="it failed", relay_id="relay-1", **producer):
    """Put a dead letter on the DLQ the way the delivery function does; its message id."""
    attributes = {
        "ErrorKind": {"DataType": "String", "StringValue": kind},
        "ErrorMessage": {"DataType": "String", "StringValue": error},
        "RelayId": {"DataType": "String", "StringValue": relay_id},
        "IdempotencyKey": {"DataType": "String", "StringValue": relay_id},
    }
    if status is not None:
        attributes["ErrorStatus"] = {"DataType": "Number", "StringValue": str(status)}
    for name, value in producer.items():
        attributes[name] = {"DataType": "String", "StringValue": value}
    return queues.sqs.send_message(
        QueueUrl=queues.dlq_url,
        MessageBody=body if isinstance(body, str) else json.dumps(body),
        MessageAttributes=attributes,
    )["MessageId"]


def take_all(queues, url) -> list[dict]:
    """Receive and delete everything on a queue (for assertions)."""
    found = []
    while batch := queues.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", []):
        found += batch
        for message in batch:
            queues.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def visible(queues, url) -> int:
    attributes = queues.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def strings(message: dict) -> dict[str, str]:
    return {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}


@pytest.fixture
def three(queues):
    """One dead letter of each kind; their message ids by kind."""
    return {
        "permanent": park(
            queues,
            lancepilot_message(),
            "permanent",
            422,
            "provider refused: to_number +4915123456789 is not a WhatsApp number",
            relay_id="relay-p",
        ),
        "exhausted": park(
            queues,
            lancepilot_message(text="retry me"),
            "exhausted",
            503,
            "gave up after 5 receives: provider unavailable",
            relay_id="relay-e",
            Tenant="acme",
        ),
        "invalid": park(queues, "{not json", "invalid", None, "not valid JSON", relay_id="relay-i"),
    }


def intercept(monkeypatch, operation: str, answer) -> list[dict]:
    """Answer AWS calls of ``operation`` with ``answer(params)``, or moto when that is None.

    Returns the parameters of every such call, as they are made.
    """
    real = BaseClient._make_api_call
    calls: list[dict] = []

    def call(self, name, params):
        if name == operation:
            calls.append(params)
            answered = answer(params)
            if answered is not None:
                return answered
        return real(self, name, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", call)
    return calls


def fail_once(monkeypatch, operation: str) -> None:
    """Make the next AWS call of ``operation`` fail, as an SQS hiccup or a dropped line would."""

    def fail(params):
        if len(calls) == 1:
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "injected"}}, operation
            )

    calls = intercept(monkeypatch, operation, fail)


def stacks(monkeypatch, queues) -> None:
    """CloudFormation's DescribeStacks for one stack, ``webhook-relay``, with the relay's outputs.

    (moto's CloudFormation would do, but importing it costs seconds.)
    """

    def describe(params):
        if params["StackName"] != "webhook-relay":
            error = {"Code": "ValidationError", "Message": "Stack with id x does not exist"}
            raise ClientError({"Error": error}, "DescribeStacks")
        outputs = {"DeadLetterQueueUrl": queues.dlq_url, "DeliveryQueueUrl": queues.queue_url}
        return {
            "Stacks": [
                {
                    "StackName": "webhook-relay",
                    "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
                }
            ]
        }

    intercept(monkeypatch, "DescribeStacks", describe)


# --- list ----------------------------------------------------------------------------------------


def test_list_shows_reasons_and_no_body_and_consumes_nothing(relay, queues, three):
    code, out, _ = relay("list")

    assert code == 0
    for message_id in three.values():
        assert message_id in out
    for shown in ("permanent", "exhausted", "invalid", "422", "503", "relay-p", "gave up after 5"):
        assert shown in out
    assert PHONE not in out
    assert PHONE[1:] not in out
    assert "4915123456789" not in out  # a number quoted in the provider's error text is masked
    assert "retry me" not in out
    assert visible(queues, queues.dlq_url) == 3  # all still there, visible at once


def test_list_filters_limits_and_speaks_json(relay, queues, three):
    code, out, _ = relay("list", "--kind", "exhausted", "--json")
    [only] = json.loads(out)
    assert code == 0
    assert (only["message_id"], only["kind"], only["status"]) == (
        three["exhausted"],
        "exhausted",
        503,
    )
    assert only["relay_id"] == "relay-e"
    assert only["age_seconds"] >= 0

    _, out, _ = relay("list", "--status", "422", "--json")
    assert [entry["message_id"] for entry in json.loads(out)] == [three["permanent"]]

    _, out, _ = relay("list", "--limit", "2", "--json")
    assert len(json.loads(out)) == 2
    assert visible(queues, queues.dlq_url) == 3


def test_list_of_an_empty_queue(relay):
    assert relay("list")[:2] == (0, "no dead letters\n")


def test_a_queue_longer_than_one_hold_is_scanned_to_the_end(relay, queues, monkeypatch):
    # A 1 s hold and slow receives: the first messages come round again long before the end.
    monkeypatch.setattr(dlq, "HOLD_SECONDS", 1)
    parked = {
        park(queues, lancepilot_message(), "exhausted", 503, relay_id=f"relay-{n}")
        for n in range(40)
    }
    receives = intercept(monkeypatch, "ReceiveMessage", lambda params: time.sleep(0.3))

    code, out, _ = relay("list", "--json")

    assert code == 0
    listed = [entry["message_id"] for entry in json.loads(out)]
    assert sorted(listed) == sorted(parked)  # every one, each once
    assert max(params["VisibilityTimeout"] for params in receives) > 1  # the hold grew
    assert visible(queues, queues.dlq_url) == 40

    code, out, _ = relay("redrive", "--kind", "exhausted", "--yes")

    assert code == 0
    assert "moved 40" in out
    assert visible(queues, queues.dlq_url) == 0
    assert len(take_all(queues, queues.queue_url)) == 40


# --- show ----------------------------------------------------------------------------------------


def test_show_prints_the_body_and_every_attribute(relay, queues, three):
    code, out, _ = relay("show", three["exhausted"])

    assert code == 0
    assert json.dumps(lancepilot_message(text="retry me")) in out  # the body, unchanged
    assert "ErrorKind (String): exhausted" in out
    assert "ErrorStatus (Number): 503" in out
    assert "Tenant (String): acme" in out
    assert "RelayId (String): relay-e" in out
    assert visible(queues, queues.dlq_url) == 3


def test_show_of_an_unknown_id(relay, three):
    code, _, err = relay("show", "no-such-message")
    assert code == 1
    assert "no dead letter no-such-message" in err


# --- redrive -------------------------------------------------------------------------------------


def test_redrive_by_kind_moves_only_those_with_their_body_and_attributes(relay, queues, three):
    code, out, _ = relay("redrive", "--kind", "exhausted", "--yes")

    assert code == 0
    assert "moved 1, skipped 2" in out
    assert "failed 0" in out
    [moved] = take_all(queues, queues.queue_url)
    assert moved["Body"] == json.dumps(lancepilot_message(text="retry me"))
    assert strings(moved) == {"RelayId": "relay-e", "IdempotencyKey": "relay-e", "Tenant": "acme"}
    left = take_all(queues, queues.dlq_url)
    assert sorted(strings(m)["ErrorKind"] for m in left) == ["invalid", "permanent"]


def test_redrive_by_status_and_by_id(relay, queues, three):
    assert relay("redrive", "--status", "422", "--yes")[0] == 0
    code, out, _ = relay("redrive", "--id", three["invalid"], "--yes")

    assert code == 0
    assert "moved 1" in out
    assert sorted(m["MessageId"] for m in take_all(queues, queues.dlq_url)) == [three["exhausted"]]
    assert len(take_all(queues, queues.queue_url)) == 2


def test_redrive_all_in_moto_falls_back_to_the_loop(relay, queues, three):
    code, out, err = relay("redrive", "--all", "--yes")

    assert code == 0
    assert "no SQS move task here" in err
    assert "moved 3, skipped 0" in out
    assert visible(queues, queues.dlq_url) == 0
    assert len(take_all(queues, queues.queue_url)) == 3


def test_redrive_all_on_aws_starts_a_move_task(relay, queues, three, monkeypatch):
    # What AWS answers; moto has no move tasks.
    started = intercept(monkeypatch, "StartMessageMoveTask", lambda _: {"TaskHandle": "task-1"})

    code, out, _ = relay("redrive", "--all", "--yes")

    assert code == 0
    assert "task-1" in out
    assert "list-message-move-tasks" in out
    [params] = started
    assert params["SourceArn"].endswith(":webhook-relay-dlq")
    assert params["DestinationArn"].endswith(":webhook-relay-delivery")
    assert visible(queues, queues.dlq_url) == 3  # SQS moves them, not the tool

    started.clear()
    assert relay("redrive", "--all", "--yes", "--no-move-task")[0] == 0
    assert started == []
    assert visible(queues, queues.dlq_url) == 0


def test_dry_run_moves_nothing(relay, queues, three):
    code, out, _ = relay("redrive", "--all", "--dry-run")

    assert code == 0
    assert "would move 3" in out
    assert "nothing was sent or deleted" in out
    assert visible(queues, queues.dlq_url) == 3
    assert visible(queues, queues.queue_url) == 0


def test_a_failed_send_deletes_nothing(relay, queues, three, monkeypatch):
    monkeypatch.setattr(queues, "queue_url", queues.queue_url + "-missing")

    code, out, err = relay("redrive", "--kind", "permanent", "--yes")

    assert code == 1
    assert "moved 0" in out
    assert "failed 1" in out
    assert "could not send to the delivery queue" in err
    assert visible(queues, queues.dlq_url) == 3  # nothing lost, all visible again


def test_a_message_dead_lettered_again_during_the_run_is_left_alone(
    relay, queues, three, monkeypatch
):
    real = BaseClient._make_api_call

    def call(self, name, params):
        answer = real(self, name, params)
        if name == "SendMessageBatch":  # the delivery function parks each one again at once
            for entry in params["Entries"]:
                relay_id = entry["MessageAttributes"]["RelayId"]["StringValue"]
                park(queues, entry["MessageBody"], "invalid", relay_id=relay_id)
        return answer

    monkeypatch.setattr(BaseClient, "_make_api_call", call)

    code, out, _ = relay("redrive", "--all", "--yes", "--quiet")

    assert code == 0
    assert "moved 3" in out
    assert "dead-lettered again while redriving: 3" in out
    assert visible(queues, queues.dlq_url) == 3
    assert visible(queues, queues.queue_url) == 3


def test_usage_errors_exit_2(relay, queues, three):
    assert relay("redrive", "--yes")[0] == 2  # nothing selected
    assert relay("redrive", "--all", "--kind", "invalid", "--yes")[0] == 2
    assert relay("redrive", "--all")[0] == 2  # no terminal to ask, and no --yes
    assert relay("list", "--kind", "other")[0] == 2
    code, _, err = relay("list", urls=False)
    assert code == 2
    assert "--dlq-url" in err
    assert visible(queues, queues.dlq_url) == 3


def test_queues_from_the_environment_and_from_a_stack(relay, queues, three, monkeypatch):
    monkeypatch.setenv("RELAY_DLQ_URL", queues.dlq_url)
    assert relay("show", three["invalid"], urls=False)[0] == 0
    monkeypatch.delenv("RELAY_DLQ_URL")

    stacks(monkeypatch, queues)
    assert relay("list", "--stack", "no-such-stack", urls=False)[0] == 2
    code, out, _ = relay(
        "redrive", "--kind", "invalid", "--yes", "--stack", "webhook-relay", urls=False
    )
    assert code == 0
    assert "moved 1" in out


# --- with the real delivery function -------------------------------------------------------------


def test_redriven_dead_letters_are_delivered(relay, delivery, aws, lancepilot):
    lancepilot.enqueue(Fault.status(404, {"message": "Resource not found.", "status": 404}))
    aws.sqs.send_message(
        QueueUrl=aws.queue_url,
        MessageBody=json.dumps(lancepilot_message()),
        MessageAttributes={"RelayId": {"DataType": "String", "StringValue": "relay-7"}},
    )
    delivery.poll_once()  # refused: parked as permanent 404 by the delivery function
    assert relay("list", "--status", "404", "--json")[1].count("relay-7") == 1

    code, out, _ = relay("redrive", "--status", "404", "--yes")
    delivery.poll_once()

    assert (code, "moved 1" in out) == (0, True)
    assert len(lancepilot.accepted()) == 1
    assert visible(aws, aws.dlq_url) == visible(aws, aws.queue_url) == 0


def test_an_interrupted_redrive_resumes_and_nothing_goes_out_twice(
    relay, delivery, aws, lancepilot, monkeypatch
):
    # Delivered once already; then parked as exhausted by an invocation that lost the race.
    body = lancepilot_message(text="already delivered")
    aws.sqs.send_message(
        QueueUrl=aws.queue_url,
        MessageBody=json.dumps(body),
        MessageAttributes={"RelayId": {"DataType": "String", "StringValue": "relay-9"}},
    )
    assert delivery.poll_once().failed == []
    park(aws, body, "exhausted", None, "gave up after 3 receives", relay_id="relay-9")
    park(aws, lancepilot_message(text="new"), "exhausted", 503, relay_id="relay-10")
    fail_once(monkeypatch, "DeleteMessageBatch")  # the run dies between send and delete

    code, out, err = relay("redrive", "--kind", "exhausted", "--yes")

    assert code == 1
    assert "moved 0" in out
    assert "sent but still on the DLQ: 2" in out
    assert "not removed from the DLQ" in err
    assert visible(aws, aws.dlq_url) == 2

    code, out, _ = relay("redrive", "--kind", "exhausted", "--yes")  # the same command again

    assert (code, "moved 2" in out) == (0, True)
    assert visible(aws, aws.dlq_url) == 0
    assert visible(aws, aws.queue_url) == 4  # each sent twice
    delivery.drain()
    texts = sorted(r.json["text"]["body"] for r in lancepilot.accepted())
    assert texts == ["already delivered", "new"]  # once each, thanks to the RelayId
    assert visible(aws, aws.dlq_url) == visible(aws, aws.queue_url) == 0
