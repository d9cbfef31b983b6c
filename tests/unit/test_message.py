"""The canonical message: every field's rules, defaults, and errors that name every bad field."""

from __future__ import annotations

import pytest

from relay.errors import InvalidMessage
from relay.message import Defaults, Message, parse_message

WS = "3f0c6a52-8a1e-4d5b-9c61-2b7e0f4d9a10"
NONE = Defaults()


def errors_of(data, defaults=NONE):
    with pytest.raises(InvalidMessage) as caught:
        parse_message(data, defaults)
    return caught.value.errors


def test_a_lancepilot_message():
    message = parse_message(
        {
            "provider": "lancepilot",
            "to": "+14155550123",
            "text": "hi",
            "workspace": WS,
            "idempotency_key": "order-1042",
        },
        NONE,
    )
    assert message == Message("lancepilot", "+14155550123", "hi", None, WS, "order-1042")


def test_a_fluents_message():
    message = parse_message(
        {"provider": "fluents", "to": "+4915123456789", "text": "hi", "from": "+12025550143"}, NONE
    )
    assert message == Message("fluents", "+4915123456789", "hi", "+12025550143", None, None)


def test_defaults_fill_provider_sender_and_workspace():
    defaults = Defaults(provider="fluents", workspace=WS, sender="+12025550143")

    assert parse_message({"to": "+14155550123", "text": "hi"}, defaults).sender == "+12025550143"
    lp = parse_message({"provider": "lancepilot", "to": "+14155550123", "text": "x"}, defaults)
    assert (lp.workspace, lp.sender) == (WS, None)


def test_body_values_beat_defaults():
    defaults = Defaults(provider="fluents", sender="+12025550143")
    message = parse_message({"to": "+14155550123", "text": "hi", "from": "+14155552671"}, defaults)
    assert message.sender == "+14155552671"


def test_missing_everything_names_every_field():
    assert set(errors_of({})) == {"provider", "to", "text"}


def test_unknown_fields_are_each_named():
    errors = errors_of(
        {
            "provider": "fluents",
            "to": "+14155550123",
            "text": "hi",
            "from": "+12025550143",
            "cc": "x",
            "Text": "y",
        }
    )
    assert errors == {"cc": ["unknown field"], "Text": ["unknown field"]}


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("provider", "whatsapp", "must be one of: lancepilot, fluents"),
        ("provider", "Lancepilot", "must be one of: lancepilot, fluents"),
        ("to", "14155550123", "must be an E.164 number"),
        ("to", "+0123456789", "must be an E.164 number"),
        ("to", "+1234567", "must be an E.164 number"),
        ("to", "+1234567890123456", "must be an E.164 number"),
        ("to", "+1 415 555 0123", "must be an E.164 number"),
        ("to", "+1234567890", "is not a valid phone number"),
        ("to", 14155550123, "must be a string"),
        ("to", None, "must be a string"),
        ("text", "", "must be 1 to 4096 characters long"),
        ("text", "x" * 4097, "must be 1 to 4096 characters long"),
        ("text", ["hi"], "must be a string"),
        ("workspace", "not-a-uuid", "must be a UUID"),
        ("idempotency_key", "k" * 256, "must be 1 to 255 characters long"),
        ("idempotency_key", "", "must be 1 to 255 characters long"),
    ],
)
def test_bad_values_are_named_with_the_problem(field, value, problem):
    data = {"provider": "lancepilot", "to": "+14155550123", "text": "hi", "workspace": WS}
    data[field] = value

    errors = errors_of(data)

    assert list(errors) == [field]
    assert errors[field][0].startswith(problem)


def test_text_limits_count_characters_not_bytes():
    text = "é" * 4096  # 8192 bytes in UTF-8
    data = {"provider": "lancepilot", "to": "+14155550123", "text": text, "workspace": WS}
    assert parse_message(data, NONE).text == text


def test_fields_of_the_other_provider_are_refused():
    assert errors_of(
        {
            "provider": "lancepilot",
            "to": "+14155550123",
            "text": "hi",
            "workspace": WS,
            "from": "+12025550143",
        }
    ) == {"from": ["does not apply to provider lancepilot"]}
    assert errors_of(
        {
            "provider": "fluents",
            "to": "+14155550123",
            "text": "hi",
            "from": "+12025550143",
            "workspace": WS,
        }
    ) == {"workspace": ["does not apply to provider fluents"]}


def test_provider_specific_fields_are_required_without_a_default():
    assert "workspace" in errors_of({"provider": "lancepilot", "to": "+14155550123", "text": "x"})
    assert "from" in errors_of({"provider": "fluents", "to": "+14155550123", "text": "x"})


def test_an_invalid_sender_is_named():
    errors = errors_of({"provider": "fluents", "to": "+14155550123", "text": "x", "from": "+1"})
    assert list(errors) == ["from"]


@pytest.mark.parametrize("data", [[], "text", 1, None])
def test_a_non_object_is_refused(data):
    assert "body" in errors_of(data)
