"""Provider translation, masking, and reading provider answers defensively."""

from __future__ import annotations

import json

import pytest

from relay.config import Settings
from relay.ids import queued_relay_id
from relay.message import Message
from relay.phone import mask
from relay.providers import RELAY_ID_HEADER, build_request, read_error, read_receipt

SETTINGS = Settings.from_env(
    {"PROVIDER_TOKENS_SECRET": "t", "RELAY_AUTH_SECRET": "a", "IDEMPOTENCY_TABLE": "i"}
)
WS = "3f0c6a52-8a1e-4d5b-9c61-2b7e0f4d9a10"


def test_lancepilot_request():
    request = build_request(
        Message("lancepilot", "+14155550123", "hi", workspace=WS), "tok", SETTINGS
    )
    assert request.url == (
        f"https://lancepilot.com/api/v3/workspaces/{WS}/contacts/number/14155550123/messages/text"
    )
    assert json.loads(request.body) == {"text": {"body": "hi"}}
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.headers["Content-Type"] == "application/json"


def test_fluents_request():
    request = build_request(
        Message("fluents", "+4915123456789", "Grüße", sender="+12025550143"), "tok", SETTINGS
    )
    assert request.url == "https://api.fluents.ai/v1/messages"
    assert json.loads(request.body) == {
        "to_number": "+4915123456789",
        "from_number": "+12025550143",
        "message": "Grüße",
    }


LANCEPILOT = Message("lancepilot", "+14155550123", "hi", workspace=WS)
FLUENTS = Message("fluents", "+4915123456789", "hi", sender="+12025550143")
RELAY_ID = "0b6f3e0e-7c1a-4e55-8d2b-3f1e9a6c2d40"


@pytest.mark.parametrize("message", [LANCEPILOT, FLUENTS], ids=["lancepilot", "fluents"])
def test_every_provider_request_carries_the_relay_id(message):
    request = build_request(message, "tok", SETTINGS, relay_id=RELAY_ID)
    bare = build_request(message, "tok", SETTINGS)

    assert RELAY_ID_HEADER == "X-Relay-Id"
    assert request.headers[RELAY_ID_HEADER] == RELAY_ID
    # A header and nothing else: the provider's documented request is unchanged.
    assert {k: v for k, v in request.headers.items() if k != RELAY_ID_HEADER} == bare.headers
    assert (request.url, request.body) == (bare.url, bare.body)
    assert RELAY_ID_HEADER not in bare.headers  # no id given, no header


def test_a_relay_id_that_is_no_header_value_is_percent_encoded():
    # CR/LF must not split the header, and http.client sends header values as Latin-1.
    request = build_request(LANCEPILOT, "tok", SETTINGS, relay_id="a\r\nX-Evil: 1 ☃")

    assert request.headers[RELAY_ID_HEADER] == "a%0D%0AX-Evil:%201%20%E2%98%83"
    assert request.headers[RELAY_ID_HEADER].isascii()


@pytest.mark.parametrize(
    ("attribute", "relay_id"),
    [
        ("6f1d7c1e-0b4a-4e2f-9c83-4d2a61b7e905", "6f1d7c1e-0b4a-4e2f-9c83-4d2a61b7e905"),
        ("order:12.v2_x-y", "order:12.v2_x-y"),  # plain: used, and sent unchanged
        (None, "mid"),
        ("", "mid"),
        ("order #12", "mid"),
        ("a\r\nX-Evil: 1", "mid"),
        ("x" * 129, "mid"),
        ("-leading", "mid"),
    ],
)
def test_a_queued_message_uses_its_relay_id_attribute_only_when_it_is_a_plain_id(
    attribute, relay_id
):
    chosen = queued_relay_id(attribute, "mid")

    assert chosen == relay_id
    sent = build_request(LANCEPILOT, "tok", SETTINGS, relay_id=chosen)
    assert sent.headers[RELAY_ID_HEADER] == relay_id


@pytest.mark.parametrize(
    ("provider", "body", "receipt"),
    [
        ("lancepilot", b'{"status": 201, "message": "ok", "data": {"id": 7}}', {"id": 7}),
        ("lancepilot", b"", None),
        ("lancepilot", b"<html>", None),
        ("fluents", b"", None),
        ("fluents", b'{"id": "m1"}', {"id": "m1"}),
        ("fluents", b"[1]", None),
    ],
)
def test_success_bodies_are_optional(provider, body, receipt):
    assert read_receipt(provider, body) == receipt


def test_errors_are_passed_on_as_json_or_bounded_text():
    assert read_error(b'{"message": "Unauthenticated."}') == {"message": "Unauthenticated."}
    assert read_error(b"Bad Gateway") == {"message": "Bad Gateway"}
    assert read_error(b"") is None
    assert len(read_error(b"x" * 100_000)["message"]) == 2048


@pytest.mark.parametrize(
    ("number", "masked"),
    [("+14155550123", "+141******23"), ("+4915123456789", "+491********89"), ("+123", "****")],
)
def test_mask(number, masked):
    assert mask(number) == masked
