"""Provider translation, masking, and reading provider answers defensively."""

from __future__ import annotations

import json

import pytest

from relay.config import Settings
from relay.message import Message
from relay.phone import mask
from relay.providers import build_request, read_error, read_receipt

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
