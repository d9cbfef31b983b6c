"""The delivery function, through its real entry point, on any SQS body and message attributes.

It never raises, answers a batchItemFailures list, and parks a body that is not a valid message
in the dead-letter queue as ErrorKind invalid without calling a provider, even when valid
messages share its batch (they are sent, once each, and carry nothing of the invalid ones).
Every record ends delivered, parked or handed back, and on or after its last receive it is not
handed back; receive counts run past the limit and attributes up to SQS's ten.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from relay.errors import InvalidMessage, MalformedBody
from relay.intake import load_json
from relay.message import Defaults, parse_message
from relay.queue_worker import QueueWorker, Redeliver
from relay_local.lambda_runtime import LambdaContext
from relay_local.sandbox import Fault
from tests.conftest import WORKSPACE
from tests.property import examples
from tests.property.strategies import json_values, message_like, valid_messages

if TYPE_CHECKING:
    from collections.abc import Iterator

QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:webhook-relay-DeliveryQueue"
# SQS accepts only these characters in a body or a string attribute value.
_SQS_REFUSES = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sqs_clean(text: str) -> str:
    return _SQS_REFUSES.sub("", text)


sqs_text = st.text(st.characters(), max_size=40).map(sqs_clean)
attribute_names = st.from_regex(r"[A-Za-z0-9_\-]{1,12}", fullmatch=True) | st.sampled_from(
    ["RelayId", "IdempotencyKey", "ErrorKind", "ErrorMessage", "traceparent"]
)
attribute_values = st.one_of(
    sqs_text.filter(bool).map(lambda v: {"dataType": "String", "stringValue": v}),
    st.integers().map(lambda n: {"dataType": "Number", "stringValue": str(n)}),
    st.binary(min_size=1, max_size=20).map(
        lambda b: {"dataType": "Binary", "binaryValue": base64.b64encode(b).decode()}
    ),
)
# What a producer can put on the queue: any text SQS takes, JSON of any shape, messages.
bodies = st.one_of(
    sqs_text,
    st.binary(max_size=100).map(lambda b: sqs_clean(b.decode("utf-8", "replace"))),
    json_values.map(json.dumps),
    message_like.map(lambda m: sqs_clean(json.dumps(m, ensure_ascii=False))),
    message_like.map(json.dumps),
    valid_messages.map(json.dumps),
    st.sampled_from(["[" * 5000 + "]" * 5000, "1" * 5000, "null", "NaN", "\ufeff{}"]),
).filter(str.strip)


def record(body: str, attributes: dict, receive_count: int) -> dict:
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "AQEB" + uuid.uuid4().hex,
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": "0"},
        "messageAttributes": {
            name: {**value, "stringListValues": [], "binaryListValues": []}
            for name, value in attributes.items()
        },
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-east-1",
    }


def is_invalid(body: str) -> bool:
    try:
        parse_message(load_json(body), Defaults())
    except (MalformedBody, InvalidMessage):
        return True
    return False


def drain(sqs, url: str) -> list[dict]:
    found = []
    while batch := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", []):
        found += batch
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


@contextmanager
def outcomes() -> Iterator[dict[str, list[str]]]:
    """How ``QueueWorker.process`` ended for each message id: its outcome ("delivered",
    "duplicate", "dead_lettered"), "handed back" (Redeliver), or the type of anything else."""
    seen: dict[str, list[str]] = {}
    real = QueueWorker.process

    def watched(self, queued, message, deadline):
        try:
            outcome = real(self, queued, message, deadline)
        except Redeliver:
            seen.setdefault(queued.message_id, []).append("handed back")
            raise
        except BaseException as error:
            seen.setdefault(queued.message_id, []).append(type(error).__name__)
            raise
        seen.setdefault(queued.message_id, []).append(outcome)
        return outcome

    QueueWorker.process = watched  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        QueueWorker.process = real  # type: ignore[method-assign]


# Each example runs the delivery handler against moto and the sandboxes: few, and slow.
BATCHES = settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


EXAMPLE_BODY = json.dumps(
    {"provider": "lancepilot", "to": "+14155550123", "text": "hi", "workspace": WORKSPACE}
)
TEN_ATTRIBUTES = {
    "ErrorKind": {"dataType": "String", "stringValue": "permanent"},
    "RelayId": {"dataType": "String", "stringValue": "relay-example"},
    **{f"a{i}": {"dataType": "Number", "stringValue": str(i)} for i in range(8)},
}

# How the providers answer every request: normally, retryably (a message is handed back
# before its last receive, parked as exhausted on it) or with a refusal (parked as permanent).
ANSWERS = {
    "normally": (None, None),
    "503": (Fault.status(503), Fault.status(503)),
    "a refusal": (
        Fault.status(422, {"message": "Validation error", "errors": {}}),
        Fault.status(400, {"message": "refused", "error": "Bad Request", "statusCode": 400}),
    ),
}


@given(
    batch=st.lists(
        st.tuples(
            # Half valid messages, so that sends meet the providers' answers below.
            valid_messages.map(json.dumps) | bodies,
            # SQS's ten: with a reason's five, dead_letter must choose which to keep.
            st.dictionaries(attribute_names, attribute_values, max_size=10),
            # Up to and past the last receive (the aws fixture's MAX_RECEIVE_COUNT is 3).
            st.integers(1, 6),
        ),
        min_size=1,
        max_size=3,
    ),
    answering=st.sampled_from(sorted(ANSWERS)),
)
# Always tried: a valid message with SQS's ten attributes, reserved names among them, parked on
# its last receive (exhausted) and past it (exhausted, unsent), so dead_letter must drop some.
@example(batch=[(EXAMPLE_BODY, TEN_ATTRIBUTES, 3)], answering="503")
@example(batch=[(EXAMPLE_BODY, TEN_ATTRIBUTES, 6)], answering="a refusal")
@BATCHES
def test_any_batch_is_answered_and_invalid_bodies_are_parked_without_a_send(
    delivery, aws, lancepilot, fluents, batch, answering
):
    records = [record(body, attributes, count) for body, attributes, count in batch]
    drain(aws.sqs, aws.dlq_url)  # nothing left over from an earlier (failed) example
    lancepilot.reset()
    fluents.reset()
    for sandbox, fault in zip((lancepilot, fluents), ANSWERS[answering], strict=True):
        sandbox.set_default(fault)

    with outcomes() as ended:
        answer = delivery.handler({"Records": records}, LambdaContext())

    assert isinstance(answer, dict)
    failures = answer["batchItemFailures"]
    assert isinstance(failures, list)
    ids = {r["messageId"] for r in records}
    handed_back = {f["itemIdentifier"] for f in failures}
    assert handed_back <= ids
    parked = drain(aws.sqs, aws.dlq_url)
    invalid = [r for r in records if is_invalid(r["body"])]
    limit = aws.max_receive_count
    last = [r for r, (*_, count) in zip(records, batch, strict=True) if count >= limit]
    event(f"{len(invalid)} of {len(records)} invalid, {len(failures)} handed back")
    event(f"{len(last)} of {len(records)} on or after the last receive")
    event(f"most attributes on a record: {max(len(r['messageAttributes']) for r in records)}")
    event(f"providers answer {answering}")
    # Each record went through the worker once and ended delivered, parked or handed back
    # (no exception of another kind), as the batch answer says.
    assert ended.keys() == ids, ended
    for r in records:
        [outcome] = ended[r["messageId"]]
        assert outcome in {"delivered", "duplicate", "dead_lettered", "handed back"}, outcome
        assert (outcome == "handed back") == (r["messageId"] in handed_back), (outcome, r)
    assert len(parked) == Counter(o for [o] in ended.values())["dead_lettered"], parked
    # On (or after) its last receive, a message is delivered or parked, never handed back.
    for r in last:
        assert ended[r["messageId"]] != ["handed back"], r
    kinds = Counter(p["MessageAttributes"]["ErrorKind"]["StringValue"] for p in parked)
    event("parked: " + (", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"))
    for copy in parked:
        assert len(copy.get("MessageAttributes", {})) <= 10, copy
        assert copy["MessageAttributes"]["ErrorKind"]["StringValue"] in {
            "invalid",
            "permanent",
            "exhausted",
        }
    for r in invalid:
        assert r["messageId"] not in {f["itemIdentifier"] for f in failures}
        [copy] = [p for p in parked if p["Body"] == r["body"]][:1] or [None]
        assert copy is not None, f"{r['body']!r} was not dead-lettered"
        assert copy["MessageAttributes"]["ErrorKind"]["StringValue"] == "invalid"
    if len(invalid) == len(records):
        assert lancepilot.received == []
        assert fluents.received == []
    assert lancepilot.violations() == []
    assert fluents.violations() == []


# Ways to break a valid message, each enough on its own for parse_message to refuse it; the
# broken message keeps its tagged text, so a provider request carrying it would show.
BREAKS = {
    "no to": lambda m: {k: v for k, v in m.items() if k != "to"},
    "bad to": lambda m: {**m, "to": "call me maybe"},
    "unknown provider": lambda m: {**m, "provider": "sms"},
    "unknown field": lambda m: {**m, "sent_by": "cron"},
    "text not a string": lambda m: {**m, "text": {"body": m["text"]}},
}


@st.composite
def mixed_batches(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Valid messages and invalid bodies (broken messages, producers' junk), shuffled.

    Each item is ("valid", message), ("broken", (message, how)) or ("junk", body); the test
    tags the messages' texts, since tags must be unique across examples.
    """
    valid = draw(st.lists(valid_messages.map(lambda m: ("valid", m)), min_size=1, max_size=3))
    invalid = draw(
        st.lists(
            st.one_of(
                st.tuples(valid_messages, st.sampled_from(sorted(BREAKS))).map(
                    lambda broken: ("broken", broken)
                ),
                bodies.filter(is_invalid).map(lambda body: ("junk", body)),
            ),
            min_size=1,
            max_size=3,
        )
    )
    return draw(st.permutations(valid + invalid))


def tagged(message: dict[str, Any], tag: str) -> dict[str, Any]:
    """``message`` with ``tag`` leading its text; a key of its own, if it had one (a key shared
    with another message would be refused as reused, and the table outlives each example)."""
    marked = {**message, "text": f"{tag} {message['text']}"}
    if "idempotency_key" in marked:
        marked["idempotency_key"] = f"key-{tag}"
    return marked


TAG = re.compile(r"(?:ok|bad)-[0-9a-f]{32}")


@given(batch=mixed_batches())
@BATCHES
def test_in_a_mixed_batch_only_the_valid_messages_reach_a_provider_each_once(
    delivery, aws, lancepilot, fluents, batch
):
    records, valid, invalid = [], {}, {}  # valid: tag -> provider; invalid: message id -> body
    for kind, item in batch:
        if kind == "valid":
            tag = f"ok-{uuid.uuid4().hex}"
            body = json.dumps(tagged(item, tag))
            valid[tag] = item["provider"]
        elif kind == "broken":
            message, how = item
            body = json.dumps(BREAKS[how](tagged(message, f"bad-{uuid.uuid4().hex}")))
        else:
            body = item
        records.append(record(body, {}, 1))
        if kind != "valid":
            assert is_invalid(body), body  # the breaks above must stay breaks
            invalid[records[-1]["messageId"]] = body
    drain(aws.sqs, aws.dlq_url)  # nothing left over from an earlier (failed) example
    lancepilot.reset()
    fluents.reset()

    answer = delivery.handler({"Records": records}, LambdaContext())

    event(" + ".join(f"{n} {kind}" for kind, n in sorted(Counter(k for k, _ in batch).items())))
    # Invalid records are done with (parked), never handed back for another try.
    handed_back = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
    assert handed_back.isdisjoint(invalid), handed_back & invalid.keys()
    # Each provider request carries exactly one tag, a valid message's, at its own provider;
    # and each valid message is sent once. So nothing of an invalid record went out, tagged
    # or not: there is no request left over to carry it.
    sent: Counter[str] = Counter()
    for provider, sandbox in (("lancepilot", lancepilot), ("fluents", fluents)):
        for request in sandbox.received:
            tags = TAG.findall(request.body.decode("utf-8", "replace"))
            assert len(tags) == 1, (provider, request.body)
            assert valid.get(tags[0]) == provider, (provider, request.body)
            sent[tags[0]] += 1
    assert sent == Counter(list(valid)), sent
    # Every invalid record is parked once, body unchanged, as invalid; no valid one is.
    parked = drain(aws.sqs, aws.dlq_url)
    by_id = Counter(p["MessageAttributes"]["RelayId"]["StringValue"] for p in parked)
    assert by_id == Counter(list(invalid)), by_id
    for copy in parked:
        assert copy["Body"] == invalid[copy["MessageAttributes"]["RelayId"]["StringValue"]]
        assert copy["MessageAttributes"]["ErrorKind"]["StringValue"] == "invalid"
