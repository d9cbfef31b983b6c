"""Caller-chosen text that ends up in SQS message attributes, under SQS's character rules.

SQS takes only #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF in a message
body, and "for string data types, the Value attribute has the same restrictions on the content
as the message body" (SQS API reference, MessageAttributeValue). moto does not check attribute
values, so the fixture below enforces that rule at botocore's boundary, the way SQS answers it
(InvalidParameterValue). A JSON string may hold any of the refused characters ("\\u0001").
"""

from __future__ import annotations

import json
import re

import pytest
from botocore.exceptions import ClientError

from relay_local.lambda_runtime import LambdaContext
from relay_local.sandbox import Fault
from tests.conftest import bearer, fluents_message, handler_session
from tests.property.test_delivery_properties import drain, record

SQS_REFUSES = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Characters a JSON string carries as an escape ("\u0000") that SQS refuses.
REFUSED = ["\x00", "\x1b", "\uffff"]
IDS = ["U+0000", "U+001B", "U+FFFF"]
# A field name may also be a lone surrogate (valid JSON, "\ud800"), which SQS refuses too.
NAMES = [*REFUSED, "\ud800"]
NAME_IDS = [*IDS, "U+D800"]


@pytest.fixture
def sqs_character_rules(aws):
    """SendMessage refuses what SQS refuses, for clients created after this fixture (and after
    moto's, which sets up a fresh default session)."""
    session = handler_session()

    def check(params, **_):
        texts = {"MessageBody": params.get("MessageBody", "")}
        for name, value in (params.get("MessageAttributes") or {}).items():
            texts[f"message attribute {name}"] = value.get("StringValue") or ""
        for where, text in texts.items():
            if found := SQS_REFUSES.search(text):
                raise ClientError(
                    {
                        "Error": {
                            "Code": "InvalidParameterValue",
                            "Message": f"Invalid binary character '#x{ord(found.group()):X}' "
                            f"was found in the {where}",
                        }
                    },
                    "SendMessage",
                )

    session.events.register("provide-client-params.sqs.SendMessage", check)
    yield
    session.events.unregister("provide-client-params.sqs.SendMessage", check)


@pytest.mark.parametrize("char", REFUSED, ids=IDS)
def test_an_idempotency_key_sqs_cannot_carry_is_no_5xx_when_queued(
    sqs_character_rules, webhook, fluents, char
):
    """A key SQS cannot carry in the IdempotencyKey attribute is escaped there, so the caller
    gets 202 (or 422), never a 503 for their own input."""
    message = fluents_message(idempotency_key=f"order-{char}-1042")

    answer = webhook.post(message, headers={**bearer(), "prefer": "respond-async"})

    assert answer.status < 500, answer.json
    assert answer.status in (202, 422)


@pytest.mark.parametrize("char", NAMES, ids=NAME_IDS)
def test_an_unknown_field_sqs_cannot_carry_is_still_dead_lettered_as_invalid(
    sqs_character_rules, delivery, aws, fluents, char
):
    """An unknown field's name SQS cannot carry in ErrorMessage is escaped there, so the
    message is parked as invalid, not handed back on every receive."""
    body = json.dumps(
        {**fluents_message(), f"colour{char}": "blue"}
    )  # the JSON body itself is ASCII
    queued = record(body, {}, 1)

    answer = delivery.handler({"Records": [queued]}, LambdaContext())

    assert answer == {"batchItemFailures": []}
    [parked] = drain(aws.sqs, aws.dlq_url)
    assert parked["MessageAttributes"]["ErrorKind"]["StringValue"] == "invalid"
    assert fluents.received == []


def test_a_refused_message_whose_key_sqs_cannot_carry_is_parked_not_sent_again(
    sqs_character_rules, delivery, aws, fluents
):
    """A refused message whose key SQS cannot carry is parked (the key escaped in its reason
    attribute), not handed back and sent to the provider again on every receive."""
    fluents.set_default(
        Fault.status(400, {"message": "no", "error": "Bad Request", "statusCode": 400})
    )
    body = json.dumps(fluents_message(idempotency_key="otp-\x1b-913402"))
    queued = record(body, {}, 1)

    answer = delivery.handler({"Records": [queued]}, LambdaContext())

    assert answer == {"batchItemFailures": []}
    [parked] = drain(aws.sqs, aws.dlq_url)
    assert parked["MessageAttributes"]["ErrorKind"]["StringValue"] == "permanent"
    assert len(fluents.received) == 1
