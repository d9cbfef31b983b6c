"""The delivery function, through its real entry point, on any SQS body and message attributes.

It never raises, answers a batchItemFailures list, and parks a body that is not a valid message
in the dead-letter queue as ErrorKind invalid without calling a provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.errors import InvalidMessage, MalformedBody
from relay.intake import load_json
from relay.message import Defaults, parse_message
from relay_local.lambda_runtime import LambdaContext
from tests.property import examples
from tests.property.strategies import json_values, message_like, valid_messages

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


@given(
    batch=st.lists(
        st.tuples(
            bodies,
            st.dictionaries(attribute_names, attribute_values, max_size=4),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=3,
    )
)
@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_batch_is_answered_and_invalid_bodies_are_parked_without_a_send(
    delivery, aws, lancepilot, fluents, batch
):
    records = [record(body, attributes, count) for body, attributes, count in batch]
    lancepilot.reset()
    fluents.reset()

    answer = delivery.handler({"Records": records}, LambdaContext())

    assert isinstance(answer, dict)
    failures = answer["batchItemFailures"]
    assert isinstance(failures, list)
    ids = {r["messageId"] for r in records}
    assert {f["itemIdentifier"] for f in failures} <= ids
    parked = drain(aws.sqs, aws.dlq_url)
    invalid = [r for r in records if is_invalid(r["body"])]
    event(f"{len(invalid)} of {len(records)} invalid, {len(failures)} handed back")
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
