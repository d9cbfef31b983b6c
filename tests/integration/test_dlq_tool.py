"""`relay dlq list|show|redrive` against moto, through the tool's real entry point.

SQS's message move task, which moto lacks, is answered by botocore's Stubber on a real client.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from relay.phone import mask
from relay_local.esm import event_record
from relay_local.lambda_runtime import LambdaContext
from relay_local.sandbox import Fault
from relay_ops import dlq
from relay_ops.cli import main
from tests.conftest import bearer, fluents_message, lancepilot_message

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
    """Run ``relay dlq ...`` with the test queues; (exit code, stdout, stderr).

    ``terminal=True``: stderr is a terminal, so the tool draws its progress bar there.
    """

    def run(*argv: str, urls: bool = True, terminal: bool = False):
        where = ["--dlq-url", queues.dlq_url, "--queue-url", queues.queue_url] if urls else []
        with pytest.MonkeyPatch.context() as patch:
            if terminal:  # capsys's stream, in place only now the test runs
                patch.setattr(sys.stderr, "isatty", lambda: True)
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


def hidden(queues, url) -> int:
    """Messages received and not yet visible again: what a run left held."""
    attributes = queues.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesNotVisible"])


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


def move_task_ready(monkeypatch) -> list[dict]:
    """SQS as on AWS with no move task running (moto has none): the parameters of every
    StartMessageMoveTask call, which moto then answers by failing, so the tool's loop runs."""
    intercept(monkeypatch, "ListMessageMoveTasks", lambda params: {"Results": []})
    return intercept(monkeypatch, "StartMessageMoveTask", lambda params: None)


def fail_once(monkeypatch, operation: str) -> None:
    """Make the next AWS call of ``operation`` fail, as an SQS hiccup or a dropped line would."""

    def fail(params):
        if len(calls) == 1:
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "injected"}}, operation
            )

    calls = intercept(monkeypatch, operation, fail)


@pytest.fixture
def on_call(request):
    """``on_call(event, handler)``: a botocore event handler on every client of boto3's default
    session, the tool's own included (``before-call.sqs.SendMessageBatch``); removed after."""
    session = boto3.DEFAULT_SESSION
    assert session is not None  # made by the queues fixture's first client

    def register(event: str, handler) -> None:
        session.events.register(event, handler)
        request.addfinalizer(lambda: session.events.unregister(event, handler))

    return register


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


def test_list_json_carries_the_whole_error_masked(relay, queues):
    # A provider's error text longer than the table's column, with a number past its cut.
    error = "provider refused: " + "the contact is not opted in; " * 4 + "to_number +4915123456789"
    park(queues, lancepilot_message(), "permanent", 422, error)

    _, table, _ = relay("list")
    [listed] = json.loads(relay("list", "--json")[1])

    assert listed["error"] == error.replace("+4915123456789", "*" * 12 + "89")
    assert len(listed["error"]) > 80
    assert "*89" not in table  # the table still shows only the first 80 characters


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

    code, out, err = relay("list", "--json", "--max-hold", "8")

    assert code == 0
    listed = [entry["message_id"] for entry in json.loads(out)]
    assert sorted(listed) == sorted(parked)  # every one, each once
    holds = {params["VisibilityTimeout"] for params in receives}
    assert max(holds) > 1  # the hold grew ...
    assert max(holds) <= 8  # ... but no further than --max-hold
    assert "holding messages 2 s now (at most 8 s)" in err
    assert visible(queues, queues.dlq_url) == 40

    code, out, _ = relay("redrive", "--kind", "exhausted", "--yes")

    assert code == 0
    assert "moved 40" in out
    assert visible(queues, queues.dlq_url) == 0
    assert len(take_all(queues, queues.queue_url)) == 40


def test_a_queue_longer_than_the_longest_hold_stops_and_hides_nothing(relay, queues, monkeypatch):
    # The longest hold is 1 s and reading takes longer than that: messages keep coming round,
    # so the scan can never run dry. It has to stop by itself, and say so.
    monkeypatch.setattr(dlq, "HOLD_SECONDS", 1)
    for n in range(60):
        park(queues, lancepilot_message(), "exhausted", 503, relay_id=f"relay-{n}")
    receives = intercept(monkeypatch, "ReceiveMessage", lambda params: time.sleep(0.3))

    code, out, err = relay("redrive", "--kind", "permanent", "--yes", "--max-hold", "1")

    assert code == 1
    assert "some may not have been seen" in err
    assert "the scan stopped short" in out
    assert {params["VisibilityTimeout"] for params in receives} == {1}
    assert hidden(queues, queues.dlq_url) == 0  # all visible again at once
    assert visible(queues, queues.dlq_url) == 60


# --- show ----------------------------------------------------------------------------------------


def test_show_prints_every_attribute_and_the_body_masked(relay, queues, three):
    code, out, _ = relay("show", three["permanent"])

    assert code == 0
    assert "ErrorKind (String): permanent" in out
    assert "ErrorStatus (Number): 422" in out
    assert "RelayId (String): relay-p" in out
    # The quoted number masked as list masks it; the recipient as the relay's logs mask it.
    assert f"to_number {'*' * 12}89 is not a WhatsApp number" in out
    [body] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    text = lancepilot_message()["text"]
    assert body == {
        **lancepilot_message(),
        "to": mask(PHONE),
        "text": f"[hidden: {len(text)} characters]",
    }
    for secret in (PHONE, PHONE[1:], "4915123456789", text):
        assert secret not in out
    assert "--unmasked prints the body as stored" in out
    assert visible(queues, queues.dlq_url) == 3


def test_show_unmasked_prints_the_body_and_every_attribute_as_stored(relay, queues, three):
    code, out, _ = relay("show", three["exhausted"], "--unmasked")

    assert code == 0
    assert json.dumps(lancepilot_message(text="retry me")) in out  # the body, unchanged
    assert "ErrorKind (String): exhausted" in out
    assert "ErrorStatus (Number): 503" in out
    assert "Tenant (String): acme" in out
    assert "RelayId (String): relay-e" in out
    assert "to_number +4915123456789" in relay("show", three["permanent"], "--unmasked")[1]
    assert visible(queues, queues.dlq_url) == 3


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        # Fluents: the sender is a number too; a field the relay refused still gets masked.
        (
            fluents_message(note="call +4915123456789"),
            {
                **fluents_message(),
                "to": mask("+4915123456789"),
                "from": mask("+12025550143"),
                "text": "[hidden: 19 characters]",
                "note": f"call {'*' * 12}89",
            },
        ),
        # Not the canonical shape: numbers unquoted or in a list, text that is not a string.
        (
            {"to": [4915123456789], "text": {"body": "secret"}, "4915123456789": 1},
            {"to": [mask(4915123456789)], "text": "[hidden: 18 characters]", f"{'*' * 11}89": 1},
        ),
    ],
    ids=["fluents", "odd-shapes"],
)
def test_show_masks_numbers_and_hides_text_wherever_they_are(relay, queues, body, shown):
    code, out, _ = relay("show", park(queues, body, "invalid"))

    assert code == 0
    assert [json.loads(line) for line in out.splitlines() if line.startswith("{")] == [shown]
    assert "secret" not in out
    assert "+4915123456789" not in out


@pytest.mark.parametrize(
    "body", ["{not json +4915123456789", "[" * 5000 + '"+4915123456789"' + "]" * 5000]
)
def test_show_leaves_out_a_body_it_cannot_mask(relay, queues, body):
    message_id = park(queues, body, "invalid")

    code, out, _ = relay("show", message_id)

    assert code == 0
    assert f"({len(body)} characters, not JSON that can be masked: hidden; --unmasked" in out
    assert "4915123456789" not in out
    assert body in relay("show", message_id, "--unmasked")[1]


def test_show_of_an_unknown_id(relay, three):
    code, _, err = relay("show", "no-such-message")
    assert code == 1
    assert "no dead letter no-such-message" in err


# --- redrive -------------------------------------------------------------------------------------


def test_redrive_by_kind_moves_only_those_with_their_body_and_attributes(relay, queues, three):
    code, out, err = relay("redrive", "--kind", "exhausted", "--yes")

    assert code == 0
    assert "moved 1, skipped 2" in out
    assert "failed 0" in out
    # How long a killed run would hide messages, said before it starts.
    assert "if it is killed, they reappear on the DLQ within 30 s (at most 300 s" in err
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


def test_no_move_task_moves_message_by_message(relay, queues, three, on_call):
    called: list[str] = []
    on_call("before-call.sqs", lambda model, **_: called.append(model.name))

    code, out, _ = relay("redrive", "--all", "--yes", "--no-move-task")

    assert (code, "moved 3" in out) == (0, True)
    assert not [name for name in called if "MoveTask" in name]
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


def parked_again_at_once(monkeypatch, queues, kind: str) -> None:
    """As the delivery function would, park each message the tool sends again at once, as
    ``kind``, under the RelayId it was sent with."""
    real = BaseClient._make_api_call

    def call(self, name, params):
        answer = real(self, name, params)
        if name == "SendMessageBatch":
            for entry in params["Entries"]:
                relay_id = entry["MessageAttributes"]["RelayId"]["StringValue"]
                park(queues, entry["MessageBody"], kind, relay_id=relay_id)
        return answer

    monkeypatch.setattr(BaseClient, "_make_api_call", call)


def test_a_message_dead_lettered_again_during_the_run_is_left_alone(
    relay, queues, three, monkeypatch
):
    parked_again_at_once(monkeypatch, queues, "invalid")

    code, out, _ = relay("redrive", "--all", "--yes", "--quiet")

    assert code == 0
    assert "moved 3" in out
    assert "dead-lettered again while redriving: 3" in out
    assert visible(queues, queues.dlq_url) == 3
    assert visible(queues, queues.queue_url) == 3


def test_two_copies_of_one_message_parked_before_the_run_are_both_redriven(
    relay, queues, monkeypatch
):
    # A webhook retry queues a second copy under the first's RelayId; both were parked a
    # minute before this run (by the tool's clock), and each receive takes one message, so the
    # second copy comes after the first was sent.
    for _ in range(2):
        park(queues, {"text": "copy"}, "exhausted", relay_id="relay-twice")
    now = datetime.now(dlq.UTC) + timedelta(minutes=1)
    monkeypatch.setattr(dlq, "utc_now", lambda: now)
    receives = one_at_a_time(monkeypatch)

    code, out, _ = relay("redrive", "--all", "--yes", "--quiet")

    assert receives[:2] == [1, 1]  # two batches: the guard was asked about the second copy
    assert code == 0, out
    assert "moved 2" in out
    assert "dead-lettered again" not in out
    assert visible(queues, queues.dlq_url) == 0


def test_a_copy_parked_again_during_the_run_is_left_alone_whatever_its_key(
    relay, queues, monkeypatch
):
    # A letter keyed by its producer's IdempotencyKey alone (no RelayId, as the queue's
    # redrive policy leaves one) is sent back with a RelayId, so its copy parked again by the
    # delivery function (which writes the RelayId it was sent with) is known.
    queues.sqs.send_message(
        QueueUrl=queues.dlq_url,
        MessageBody=json.dumps({"text": "refused again"}),
        MessageAttributes={"IdempotencyKey": {"DataType": "String", "StringValue": "order-7"}},
    )
    parked_again_at_once(monkeypatch, queues, "permanent")

    code, out, _ = relay("redrive", "--all", "--yes", "--quiet", "--include-possibly-delivered")

    assert code == 0
    assert "moved 1" in out
    assert "dead-lettered again while redriving: 1" in out
    [left] = take_all(queues, queues.dlq_url)
    assert strings(left)["ErrorKind"] == "permanent"


def one_at_a_time(monkeypatch) -> list[int]:
    """Every ReceiveMessage asks for one message; the sizes of what each returned."""
    real = BaseClient._make_api_call
    sizes: list[int] = []

    def call(self, name, params):
        if name == "ReceiveMessage":
            params = {**params, "MaxNumberOfMessages": 1}
        answer = real(self, name, params)
        if name == "ReceiveMessage":
            sizes.append(len(answer.get("Messages", [])))
        return answer

    monkeypatch.setattr(BaseClient, "_make_api_call", call)
    return sizes


def test_a_dead_letter_with_no_key_and_no_room_for_one_is_held_back(relay, queues):
    ten = {f"Producer{i}": {"DataType": "String", "StringValue": str(i)} for i in range(10)}
    for body in ({"text": "no key"}, {"text": "keyed", "idempotency_key": "k-1"}):
        queues.sqs.send_message(
            QueueUrl=queues.dlq_url, MessageBody=json.dumps(body), MessageAttributes=ten
        )

    # Moved by the redrive policy, no reason: possibly delivered, so included here.
    code, out, _ = relay("redrive", "--all", "--yes", "--quiet", "--include-possibly-delivered")

    assert code == 1
    assert "moved 1" in out
    assert "held back: 1 with no key" in out
    # The keyed one went as it was: its body's key is what the relay recognises it by.
    [moved] = take_all(queues, queues.queue_url)
    assert json.loads(moved["Body"])["idempotency_key"] == "k-1"
    assert strings(moved) == {name: value["StringValue"] for name, value in ten.items()}
    [left] = take_all(queues, queues.dlq_url)
    assert json.loads(left["Body"]) == {"text": "no key"}


def test_usage_errors_exit_2(relay, queues, three):
    assert relay("redrive", "--yes")[0] == 2  # nothing selected
    assert relay("redrive", "--all", "--kind", "invalid", "--yes")[0] == 2
    assert relay("redrive", "--all")[0] == 2  # no terminal to ask, and no --yes
    assert relay("list", "--kind", "other")[0] == 2
    assert relay("list", "--max-hold", "0")[0] == 2
    assert relay("list", "--max-hold", str(12 * 3600 + 1))[0] == 2
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


def test_dead_letters_older_than_the_key_ttl_are_held_back_unless_included(
    relay, queues, monkeypatch
):
    old = park(queues, lancepilot_message(text="old"), "exhausted", 503, relay_id="relay-old")
    time.sleep(0.01)  # a later SentTimestamp
    new = park(queues, lancepilot_message(text="new"), "exhausted", 503, relay_id="relay-new")
    sent = {
        entry["message_id"]: datetime.fromisoformat(entry["dead_lettered_at"])
        for entry in json.loads(relay("list", "--json")[1])
    }
    # The tool's clock: 14 days (the default --key-ttl) after the newer one was parked, so
    # the older one has just passed it.
    monkeypatch.setattr(dlq, "utc_now", lambda: sent[new] + timedelta(seconds=14 * 86400))
    # As on AWS with no task running: the task cannot hold one back, so the loop is used.
    starts = move_task_ready(monkeypatch)

    code, out, err = relay("redrive", "--all", "--yes")

    assert code == 1
    assert "moved 1, skipped 0" in out
    assert "held back: 1 older than --key-ttl" in out
    assert "1 are older than --key-ttl (the task cannot hold them back)" in err
    assert "1 dead letters are older than --key-ttl (1209600 s): held back" in err
    assert starts == []
    assert delivered(queues) == ["relay-new"]
    assert [m["MessageId"] for m in take_all_visible(queues, queues.dlq_url)] == [old]

    code, out, err = relay("redrive", "--all", "--yes", "--key-ttl", "86400", "--include-stale")

    assert (code, "moved 1" in out) == (0, True)
    assert "held back" not in out
    assert "1 dead letters are older than --key-ttl (86400 s): redriving them" in err
    assert delivered(queues) == ["relay-old"]
    assert visible(queues, queues.dlq_url) == 0


def test_possibly_delivered_letters_are_held_back_and_keep_all_from_the_move_task(
    relay, queues, monkeypatch
):
    maybe = park(
        queues,
        lancepilot_message(text="maybe"),
        "exhausted",
        None,
        "gave up after 5 receives: no answer in time",
        relay_id="relay-maybe",
        PossiblyDelivered="true",
    )
    park(queues, lancepilot_message(text="not sent"), "exhausted", 503, relay_id="relay-no")
    # As on AWS with no task running: the task cannot hold one back, so the loop is used.
    starts = move_task_ready(monkeypatch)

    code, out, err = relay("redrive", "--all", "--yes")

    assert code == 1
    assert "moved 1, skipped 0" in out
    assert "held back: 1 possibly delivered" in out
    assert "1 are possibly delivered (the task cannot hold them back)" in err
    assert "1 dead letters are possibly delivered (a send went unanswered, or no " in err
    assert "redrive policy): held back" in err
    assert starts == []
    assert delivered(queues) == ["relay-no"]
    assert [m["MessageId"] for m in take_all_visible(queues, queues.dlq_url)] == [maybe]

    code, out, err = relay("redrive", "--all", "--yes", "--include-possibly-delivered")

    assert len(starts) == 1  # the task may move them now (moto has none: the loop does)
    assert (code, "moved 1" in out, "held back" in out) == (0, True, False)
    assert "redriving them (--include-possibly-delivered)" in err
    [moved] = take_all(queues, queues.queue_url)
    # The flag goes along, as the move task would keep it: parked again, it still says so.
    assert strings(moved) == {
        "RelayId": "relay-maybe",
        "IdempotencyKey": "relay-maybe",
        "PossiblyDelivered": "true",
    }
    assert visible(queues, queues.dlq_url) == 0


def test_a_dry_run_counts_possibly_delivered_letters_as_held_back(relay, queues):
    park(queues, lancepilot_message(), "permanent", 422, relay_id="r-1", PossiblyDelivered="true")

    code, out, _ = relay("redrive", "--kind", "permanent", "--dry-run")

    assert (code, "would move 0" in out, "held back: 1 possibly delivered" in out) == (
        1,
        True,
        True,
    )
    code, out, _ = relay(
        "redrive", "--kind", "permanent", "--dry-run", "--include-possibly-delivered"
    )
    assert (code, "would move 1" in out) == (0, True)
    assert visible(queues, queues.dlq_url) == 1


def take_all_visible(queues, url) -> list[dict]:
    """What is on a queue, left there and visible."""
    found = queues.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    return found.get("Messages", [])


# --- interrupted, then run again ----------------------------------------------------------------


@pytest.fixture
def thirty_five(queues):
    """35 exhausted dead letters: four receives of up to ten; their relay ids."""
    relay_ids = [f"relay-{n}" for n in range(35)]
    for relay_id in relay_ids:
        park(queues, lancepilot_message(text=relay_id), "exhausted", 503, relay_id=relay_id)
    return relay_ids


def on_send(on_call, when: str, number: int, action) -> list[list[str]]:
    """Call ``action()`` ``when`` ("before" or "after") the ``number``-th SendMessageBatch.

    Returns the relay ids of each send, as they are made.
    """
    sends: list[list[str]] = []

    def record(params, **_):
        sends.append([e["MessageAttributes"]["RelayId"]["StringValue"] for e in params["Entries"]])
        if when == "before" and len(sends) == number:
            action()

    def after(**_):
        if when == "after" and len(sends) == number:
            action()

    on_call("before-parameter-build.sqs.SendMessageBatch", record)
    on_call("after-call.sqs.SendMessageBatch", after)
    return sends


def interrupt() -> None:
    raise KeyboardInterrupt


def ctrl_c_on_call(number: int):
    """A botocore event handler that raises KeyboardInterrupt on its ``number``-th call."""
    calls = []

    def handler(**_):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt

    return handler


def delivered(queues) -> list[str]:
    """The relay ids on the delivery queue (taking them off)."""
    return sorted(strings(m)["RelayId"] for m in take_all(queues, queues.queue_url))


@pytest.mark.parametrize("again", [False, True], ids=["once", "again-while-releasing"])
def test_an_interrupted_redrive_resumes_and_sends_each_message_once(
    relay, queues, thirty_five, on_call, again
):
    # Killed as the third batch is about to be sent: 20 moved, 10 received and held, 5 unread.
    on_send(on_call, "before", 3, interrupt)
    if again:  # and Ctrl-C once more in the middle of making the held messages visible
        on_call("after-call.sqs.ChangeMessageVisibilityBatch", ctrl_c_on_call(1))

    code, out, err = relay("redrive", "--kind", "exhausted", "--yes", "--quiet")

    assert code == 1
    assert "moved 20" in out
    assert "received but not moved, visible on the DLQ again: 10" in out
    assert "interrupted: run the same command again" in err
    assert hidden(queues, queues.dlq_url) == 0  # released now, not after the hold
    assert visible(queues, queues.dlq_url) == 15

    code, out, _ = relay("redrive", "--kind", "exhausted", "--yes", "--quiet")

    assert (code, "moved 15" in out) == (0, True)
    assert delivered(queues) == sorted(thirty_five)  # every one, none twice
    assert visible(queues, queues.dlq_url) == hidden(queues, queues.dlq_url) == 0


def test_a_receive_cut_short_says_how_long_its_messages_stay_hidden(
    relay, queues, thirty_five, on_call, monkeypatch
):
    # Interrupted after SQS answered the second receive, before the tool kept the handles.
    monkeypatch.setattr(dlq, "HOLD_SECONDS", 1)
    on_call("after-call.sqs.ReceiveMessage", ctrl_c_on_call(2))

    code, out, err = relay("redrive", "--kind", "exhausted", "--yes", "--quiet")

    assert (code, "moved 10" in out) == (1, True)
    assert "stopped during a receive: up to 10 messages it took stay hidden" in err
    assert "for up to 1 s" in err
    assert hidden(queues, queues.dlq_url) == 10  # those, and no others
    time.sleep(1.5)  # the hold the tool named
    assert visible(queues, queues.dlq_url) == 25

    assert relay("redrive", "--kind", "exhausted", "--yes", "--quiet")[0] == 0
    assert delivered(queues) == sorted(thirty_five)
    assert visible(queues, queues.dlq_url) == hidden(queues, queues.dlq_url) == 0


def test_the_loop_shows_its_progress_on_a_terminal(relay, queues, thirty_five):
    code, out, err = relay("redrive", "--kind", "exhausted", "--yes", terminal=True)

    assert (code, "moved 35" in out) == (0, True)
    assert "redrive" in err
    for shown in ("0/35", "35/35"):  # the bar, from the DLQ's count, to the end
        assert shown in err
    assert "35/35" not in out  # the bar stays off stdout


def test_the_loop_draws_no_bar_when_quiet(relay, queues, thirty_five):
    code, _, err = relay("redrive", "--kind", "exhausted", "--yes", "--quiet", terminal=True)

    assert code == 0
    assert "/35" not in err


def test_ctrl_c_stops_between_batches_and_the_rerun_finishes(
    relay, queues, thirty_five, on_call, request
):
    # A real SIGINT while the second batch is being sent: that batch is deleted too, then the
    # run stops, so nothing is on both queues. The tool takes Ctrl-C over only from Python's
    # own handler (a caller's is left alone), so start from it, whatever ran before here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    on_send(on_call, "after", 2, lambda: signal.raise_signal(signal.SIGINT))

    code, out, err = relay("redrive", "--kind", "exhausted", "--yes", "--quiet")

    assert code == 1
    assert "moved 20" in out
    assert "stopped on Ctrl-C between batches" in out
    assert "stopping after this batch" in err
    assert hidden(queues, queues.dlq_url) == 0
    assert visible(queues, queues.dlq_url) == 15
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's again

    code, out, _ = relay("redrive", "--kind", "exhausted", "--yes", "--quiet")

    assert (code, "moved 15" in out) == (0, True)
    assert delivered(queues) == sorted(thirty_five)
    assert visible(queues, queues.dlq_url) == hidden(queues, queues.dlq_url) == 0


def test_a_kill_between_send_and_delete_loses_nothing_and_hides_nothing(
    relay, queues, thirty_five, on_call
):
    # The worst moment: the second batch is on the delivery queue and not yet deleted.
    sends = on_send(on_call, "after", 2, interrupt)

    code, out, _ = relay("redrive", "--kind", "exhausted", "--yes", "--quiet")

    assert (code, "moved 10" in out) == (1, True)
    assert hidden(queues, queues.dlq_url) == 0
    assert visible(queues, queues.dlq_url) == 25  # the batch in flight is back on the DLQ too

    assert relay("redrive", "--kind", "exhausted", "--yes", "--quiet")[0] == 0

    ids = delivered(queues)
    assert sorted(set(ids)) == sorted(thirty_five)  # none lost
    # Only the batch in flight went twice; its RelayId keeps it from being delivered twice.
    assert sorted(ids) == sorted(thirty_five + sends[1])
    assert visible(queues, queues.dlq_url) == hidden(queues, queues.dlq_url) == 0


# --- --all on AWS: SQS's move task, through botocore's Stubber -----------------------------------

ACCOUNT = "https://sqs.us-east-1.amazonaws.com/123456789012"
DLQ_URL, QUEUE_URL = f"{ACCOUNT}/webhook-relay-dlq", f"{ACCOUNT}/webhook-relay-delivery"
DLQ_ARN = "arn:aws:sqs:us-east-1:123456789012:webhook-relay-dlq"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:webhook-relay-delivery"
EARLIER, STARTED = 1_767_000_000_000, 1_767_200_000_000  # StartedTimestamp, milliseconds


@pytest.fixture
def sqs_stub(monkeypatch):
    """SQS as AWS answers, for what moto lacks: the tool's client is a real one behind Stubber.

    Every call the tool makes must be the next one queued, with the parameters given, and the
    answers are checked against SQS's API model.
    """
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)  # real AWS, as far as it knows
    monkeypatch.setattr(dlq, "POLL_SECONDS", 0)
    client = boto3.client("sqs", region_name="us-east-1")
    make = boto3.client
    monkeypatch.setattr(
        boto3, "client", lambda name, **kw: client if name == "sqs" else make(name, **kw)
    )
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def relay_aws(sqs_stub, capsys):
    """Run ``relay dlq ...`` against the stubbed SQS; (exit code, stdout, stderr).

    ``terminal=True``: stderr is a terminal, so the tool draws its progress bar there.
    """

    def run(*argv: str, terminal: bool = False):
        with pytest.MonkeyPatch.context() as patch:
            if terminal:  # capsys's stream, in place only now the test runs
                patch.setattr(sys.stderr, "isatty", lambda: True)
            code = main(["dlq", *argv, "--dlq-url", DLQ_URL, "--queue-url", QUEUE_URL])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def expect_arns(stub, *urls: str) -> None:
    for url, arn in ((DLQ_URL, DLQ_ARN), (QUEUE_URL, QUEUE_ARN)):
        if url in urls or not urls:
            stub.add_response(
                "get_queue_attributes",
                {"Attributes": {"QueueArn": arn}},
                {"QueueUrl": url, "AttributeNames": ["QueueArn"]},
            )


def expect_tasks(stub, *entries: dict) -> None:
    stub.add_response(
        "list_message_move_tasks",
        {"Results": list(entries)},
        {"SourceArn": DLQ_ARN, "MaxResults": 10},
    )


def expect_scan(stub, *relay_ids: str | None) -> None:
    """The read of the DLQ before a task starts: one dead letter per relay id, parked by the
    delivery function (None: one the queue's redrive policy moved, with no RelayId or reason)."""
    messages = []
    for n, relay_id in enumerate(relay_ids):
        message: dict[str, Any] = {
            "MessageId": f"dead-{n}",
            "ReceiptHandle": f"handle-{n}",
            "Body": "{}",
            "Attributes": {"SentTimestamp": str(int(time.time() * 1000))},
        }
        if relay_id is not None:
            message["MessageAttributes"] = {
                "RelayId": {"DataType": "String", "StringValue": relay_id},
                "ErrorKind": {"DataType": "String", "StringValue": "exhausted"},
            }
        messages.append(message)
    if messages:
        stub.add_response("receive_message", {"Messages": messages})
    stub.add_response("receive_message", {})
    expect_count(stub, 0)
    if messages:  # made visible again at once, for the task
        stub.add_response(
            "change_message_visibility_batch",
            {"Successful": [{"Id": str(n)} for n in range(len(messages))], "Failed": []},
            {
                "QueueUrl": DLQ_URL,
                "Entries": [
                    {"Id": str(n), "ReceiptHandle": f"handle-{n}", "VisibilityTimeout": 0}
                    for n in range(len(messages))
                ],
            },
        )


def expect_start(stub, handle: str = "task-1") -> None:
    stub.add_response(
        "start_message_move_task",
        {"TaskHandle": handle},
        {"SourceArn": DLQ_ARN, "DestinationArn": QUEUE_ARN},
    )


def expect_count(stub, count: int) -> None:
    stub.add_response(
        "get_queue_attributes",
        {"Attributes": {"ApproximateNumberOfMessages": str(count)}},
        {"QueueUrl": DLQ_URL, "AttributeNames": ["ApproximateNumberOfMessages"]},
    )


def task(status: str, moved: int, handle: str | None = None, **more) -> dict:
    """A ListMessageMoveTasks entry; SQS gives the handle of running tasks only."""
    entry = {
        "Status": status,
        "SourceArn": DLQ_ARN,
        "DestinationArn": QUEUE_ARN,
        "ApproximateNumberOfMessagesMoved": moved,
        "ApproximateNumberOfMessagesToMove": 10,
        "StartedTimestamp": STARTED,
        **more,
    }
    if handle:
        entry["TaskHandle"] = handle
    return entry


OLD = task("COMPLETED", 4, StartedTimestamp=EARLIER, ApproximateNumberOfMessagesToMove=4)


def test_redrive_all_on_aws_follows_its_move_task_with_a_progress_bar(relay_aws, sqs_stub):
    expect_arns(sqs_stub)
    expect_tasks(sqs_stub, OLD)  # last week's task, long over
    expect_scan(sqs_stub, "relay-1", "relay-2")  # every dead letter has its RelayId
    expect_start(sqs_stub)
    expect_tasks(sqs_stub, task("RUNNING", 3, "task-1"), OLD)
    expect_tasks(sqs_stub, task("RUNNING", 7, "task-1"), OLD)
    expect_tasks(sqs_stub, OLD, task("COMPLETED", 10))  # ended: no handle any more
    expect_count(sqs_stub, 0)

    code, out, err = relay_aws("redrive", "--all", "--yes", terminal=True)

    assert code == 0, err
    assert "started an SQS message move task" in out
    assert "cancel-message-move-task --task-handle task-1" in out
    assert "move task COMPLETED: moved 10 of about 10" in out
    assert "still on the DLQ" not in out
    for shown in ("3/10", "7/10", "10/10"):  # the bar, at each reading
        assert shown in err


@pytest.mark.parametrize(
    ("readings", "reason"),
    [
        (
            [task("FAILED", 2, FailureReason="AWS.SimpleQueueService.NonExistentQueue")],
            "NonExistent",
        ),
        ([task("CANCELLING", 2, "task-1"), task("CANCELLED", 2)], "no reason given"),
    ],
    ids=["failed", "cancelled"],
)
def test_a_move_task_that_does_not_complete_exits_1(relay_aws, sqs_stub, readings, reason):
    expect_arns(sqs_stub)
    expect_tasks(sqs_stub)
    expect_scan(sqs_stub, "relay-1")
    expect_start(sqs_stub)
    expect_tasks(sqs_stub, task("RUNNING", 2, "task-1"))
    for reading in readings:
        expect_tasks(sqs_stub, reading)

    code, out, err = relay_aws("redrive", "--all", "--yes", terminal=True)

    status = readings[-1]["Status"]
    assert code == 1, err
    assert f"move task {status}: moved 2 of about 10" in out
    assert f"the move task ended {status}" in err
    assert reason in err
    assert "2/10" in err
    assert "10/10" not in err


def test_a_move_task_over_before_the_first_reading_is_found_and_what_is_left_reported(
    relay_aws, sqs_stub
):
    expect_arns(sqs_stub)
    expect_tasks(sqs_stub, OLD)
    expect_scan(sqs_stub, "relay-1")
    expect_start(sqs_stub)
    # Ours ended already, so it has no handle: it is the one that was not there before.
    expect_tasks(sqs_stub, OLD, task("COMPLETED", 10))
    expect_count(sqs_stub, 2)  # dead-lettered again meanwhile: the task has no loop guard

    code, out, err = relay_aws("redrive", "--all", "--yes", "--quiet")

    assert code == 0, err
    assert "move task COMPLETED: moved 10 of about 10" in out
    assert "still on the DLQ: about 2" in out


def test_an_interrupted_follow_is_resumed_without_a_second_task(relay_aws, sqs_stub):
    # The third reading of the tasks: the second of the one it started.
    ctrl_c = ctrl_c_on_call(3)
    sqs_stub.client.meta.events.register("after-call.sqs.ListMessageMoveTasks", ctrl_c)
    expect_arns(sqs_stub)
    expect_tasks(sqs_stub)
    expect_scan(sqs_stub, "relay-1")
    expect_start(sqs_stub)
    expect_tasks(sqs_stub, task("RUNNING", 3, "task-1"))
    expect_tasks(sqs_stub, task("RUNNING", 5, "task-1"))

    code, out, err = relay_aws("redrive", "--all", "--yes", terminal=True)

    assert code == 130
    assert "stopped following move task task-1; SQS goes on moving" in err
    sqs_stub.client.meta.events.unregister("after-call.sqs.ListMessageMoveTasks", ctrl_c)

    # The same command again: it finds the task running and follows it (a second
    # StartMessageMoveTask would fail, and Stubber would refuse it too).
    expect_arns(sqs_stub)
    expect_tasks(sqs_stub, task("RUNNING", 6, "task-1"))  # found running: joined
    expect_tasks(sqs_stub, task("RUNNING", 8, "task-1"))
    expect_tasks(sqs_stub, task("COMPLETED", 10))
    expect_count(sqs_stub, 0)

    code, out, err = relay_aws("redrive", "--all", "--yes", terminal=True)

    assert code == 0, err
    assert "following the SQS message move task already running" in out
    assert "task-1" in out
    assert "8/10" in err
    assert "move task COMPLETED: moved 10 of about 10" in out


def test_a_refused_start_follows_the_task_that_got_there_first(relay_aws, sqs_stub):
    expect_arns(sqs_stub)
    expect_tasks(sqs_stub)
    expect_scan(sqs_stub)  # nothing visible: the task is started all the same
    sqs_stub.add_client_error(
        "start_message_move_task",
        service_error_code="AWS.SimpleQueueService.UnsupportedOperation",
        service_message="There is already a task running.",
    )
    expect_tasks(sqs_stub, task("RUNNING", 1, "task-2"))  # another operator's
    expect_tasks(sqs_stub, task("COMPLETED", 10))
    expect_count(sqs_stub, 0)

    code, out, err = relay_aws("redrive", "--all", "--yes", "--quiet")

    assert code == 0, err
    assert "following the SQS message move task already running" in out
    assert "task-2" in out
    assert "one by one" not in err  # not taken for an endpoint without move tasks


def test_a_move_task_to_another_queue_is_left_alone(relay_aws, sqs_stub):
    elsewhere = "arn:aws:sqs:us-east-1:123456789012:somewhere-else"
    expect_arns(sqs_stub)
    expect_tasks(sqs_stub, task("RUNNING", 1, "task-9", DestinationArn=elsewhere))

    code, _, err = relay_aws("redrive", "--all", "--yes")

    assert code == 1
    assert elsewhere in err
    assert "cancel-message-move-task" in err


def test_status_of_task_lists_the_recent_tasks(relay_aws, sqs_stub):
    expect_arns(sqs_stub, DLQ_URL)
    expect_tasks(sqs_stub, task("RUNNING", 3, "task-1"), OLD)

    code, out, _ = relay_aws("redrive", "--status-of-task")

    assert code == 0
    assert "RUNNING" in out
    assert "moved 3 of 10" in out
    assert "handle task-1" in out


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


def test_a_message_moved_by_the_move_task_with_its_old_reason_is_handled_as_new(
    delivery, aws, lancepilot
):
    # SQS's move task keeps every attribute: the delivery function sees the old reason.
    moved = {
        "ErrorKind": {"DataType": "String", "StringValue": "exhausted"},
        "ErrorStatus": {"DataType": "Number", "StringValue": "503"},
        "ErrorMessage": {"DataType": "String", "StringValue": "gave up after 3 receives"},
        "RelayId": {"DataType": "String", "StringValue": "relay-11"},
        "IdempotencyKey": {"DataType": "String", "StringValue": "relay-11"},
    }
    body = json.dumps(lancepilot_message(text="moved by SQS"))
    lancepilot.enqueue(Fault.status(404, {"message": "Resource not found.", "status": 404}))
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body, MessageAttributes=moved)

    delivery.poll_once()  # refused this time: parked with this reason, none of the old one

    [parked] = take_all(aws, aws.dlq_url)
    reason = strings(parked)
    assert (reason["ErrorKind"], reason["ErrorStatus"]) == ("permanent", "404")
    assert "gave up" not in reason["ErrorMessage"]
    assert (reason["RelayId"], reason["IdempotencyKey"]) == ("relay-11", "relay-11")

    # Moved again, old reason and all: delivered, and only once however often it is moved.
    for _ in range(2):
        aws.sqs.send_message(
            QueueUrl=aws.queue_url, MessageBody=body, MessageAttributes=parked["MessageAttributes"]
        )
        delivery.poll_once()

    assert [r.json["text"]["body"] for r in lancepilot.accepted()] == ["moved by SQS"]
    assert visible(aws, aws.dlq_url) == visible(aws, aws.queue_url) == 0


def test_a_delivered_message_the_queue_dead_lettered_is_not_delivered_again(
    relay, delivery, aws, lancepilot, monkeypatch, capsys
):
    # Delivered, then the invocation timed out before the event source mapping deleted it, on
    # every receive, the one past the function's last too: the queue's redrive policy moves it
    # to the DLQ, message id kept, no reason.
    body = json.dumps(lancepilot_message(text="delivered, then timed out"))
    message_id = aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)["MessageId"]
    arn = dlq.queue_arn(aws.sqs, aws.queue_url)
    for receive in range(aws.max_receive_count + 1):  # the redrive policy allows one more
        [message] = aws.sqs.receive_message(
            QueueUrl=aws.queue_url,
            VisibilityTimeout=0,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )["Messages"]
        if receive == 0:
            event = {"Records": [event_record(message, arn)]}
            answer = delivery.handler(event, LambdaContext(timeout_s=30))
            assert answer["batchItemFailures"] == []
    # One receive too many: moto, as SQS, moves it to the DLQ instead of returning it.
    assert aws.sqs.receive_message(QueueUrl=aws.queue_url).get("Messages", []) == []
    capsys.readouterr()  # the handler's metrics line
    [dead] = json.loads(relay("list", "--json")[1])
    assert (dead["message_id"], dead["kind"], dead["relay_id"]) == (message_id, None, None)
    assert len(lancepilot.received) == 1
    # As on AWS with no task running: the tool looks at the dead letters before starting one.
    starts = move_task_ready(monkeypatch)

    code, out, err = relay("redrive", "--all", "--yes")

    # With no reason it may have been sent: held back until the operator says otherwise.
    assert (code, "held back: 1 possibly delivered" in out) == (1, True), err
    assert "1 are possibly delivered" in err

    code, out, err = relay("redrive", "--all", "--yes", "--include-possibly-delivered")

    assert (code, "moved 1" in out) == (0, True), err
    assert "1 carry no key" in err
    assert starts == []  # the move task would give it a new message id
    [redriven] = aws.sqs.receive_message(
        QueueUrl=aws.queue_url, VisibilityTimeout=0, MessageAttributeNames=["All"]
    )["Messages"]
    assert redriven["MessageId"] != message_id
    # Parked again, it would still say the provider may have it.
    assert strings(redriven) == {"RelayId": message_id, "PossiblyDelivered": "true"}

    delivery.poll_once()  # the real handler, with the redriven message

    assert len(lancepilot.received) == 1  # recognised as delivered: not sent again
    assert visible(aws, aws.dlq_url) == visible(aws, aws.queue_url) == 0


def test_a_webhook_queued_message_delivered_then_parked_is_not_sent_again_when_redriven(
    relay, webhook, delivery, aws, lancepilot
):
    headers = {**bearer(), "Prefer": "respond-async", "Idempotency-Key": "order-42"}
    assert webhook.post(lancepilot_message(text="queued"), headers=headers).status == 202
    [queued] = aws.sqs.receive_message(
        QueueUrl=aws.queue_url, VisibilityTimeout=0, MessageAttributeNames=["All"]
    )["Messages"]
    assert strings(queued)["QueuedBy"] == "webhook"
    delivery.poll_once()
    assert len(lancepilot.received) == 1
    # A copy of it on the DLQ as the delivery function parks one: its own attributes and a
    # reason (say its send was ambiguous on every receive, though one had got through).
    reason = {"ErrorKind": "exhausted", "ErrorMessage": "gave up after 5 receives: timeout"}
    aws.sqs.send_message(
        QueueUrl=aws.dlq_url,
        MessageBody=queued["Body"],
        MessageAttributes={
            **queued["MessageAttributes"],
            **{name: {"DataType": "String", "StringValue": v} for name, v in reason.items()},
        },
    )

    code, out, err = relay("redrive", "--all", "--yes", "--quiet")
    assert (code, "moved 1" in out) == (0, True), err
    delivery.poll_once()

    assert len(lancepilot.received) == 1  # kept under its relay id: recognised, not resent
    assert visible(aws, aws.dlq_url) == visible(aws, aws.queue_url) == 0


def test_a_possibly_delivered_dead_letter_is_listed_and_held_back_until_included(
    relay, delivery, aws, lancepilot
):
    # The first receive's send gets no answer; the next receive's is refused: parked as
    # permanent, possibly delivered. The operator finds it was not, and redrives it.
    lancepilot.enqueue(
        Fault.hang(1.5), Fault.status(422, {"message": "Validation error", "errors": {}})
    )
    aws.sqs.send_message(
        QueueUrl=aws.queue_url,
        MessageBody=json.dumps(lancepilot_message(text="in doubt")),
        MessageAttributes={"RelayId": {"DataType": "String", "StringValue": "relay-doubt"}},
    )
    assert delivery.poll_once().failed
    time.sleep(1.1)  # the first receive's backoff
    delivery.drain(idle_seconds=1.5, limit_s=10)

    code, table, _ = relay("list")
    [listed] = json.loads(relay("list", "--json")[1])
    shown = relay("show", listed["message_id"])[1]

    assert code == 0
    assert "DELIVERED?" in table
    assert "maybe" in table
    assert (listed["kind"], listed["status"], listed["possibly_delivered"]) == (
        "permanent",
        422,
        True,
    )
    assert "PossiblyDelivered: yes" in shown

    code, out, err = relay("redrive", "--all", "--yes")

    assert code == 1
    assert "held back: 1 possibly delivered" in out
    assert "check with the provider" in err
    assert (visible(aws, aws.dlq_url), visible(aws, aws.queue_url)) == (1, 0)

    code, out, err = relay("redrive", "--all", "--yes", "--include-possibly-delivered")
    delivery.poll_once()

    assert (code, "moved 1" in out) == (0, True), err
    assert [r.json["text"]["body"] for r in lancepilot.accepted()] == ["in doubt"]
    assert visible(aws, aws.dlq_url) == visible(aws, aws.queue_url) == 0
