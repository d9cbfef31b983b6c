"""parse_message on any JSON value: a valid Message, or an InvalidMessage naming fields."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import PROVIDERS
from relay.errors import InvalidMessage
from relay.ids import is_uuid
from relay.message import FIELDS, MAX_IDEMPOTENCY_KEY, MAX_TEXT, Defaults, Message, parse_message
from relay.phone import is_valid_number
from tests.conftest import WORKSPACE
from tests.property import examples
from tests.property.strategies import (
    VALID_NUMBERS,
    message_like,
    python_json_values,
)

DEFAULTS = st.sampled_from(
    [
        Defaults(),
        Defaults(provider="fluents", sender="+12025550143"),
        Defaults(provider="lancepilot", workspace=WORKSPACE),
        Defaults(workspace=WORKSPACE, sender="+12025550143"),
    ]
)
FAST = settings(max_examples=examples(300), deadline=None)


def check(data: object, defaults: Defaults) -> Message | InvalidMessage:
    """parse_message's outcome, after checking it is one of the two allowed ones."""
    try:
        message = parse_message(data, defaults)
    except InvalidMessage as raised:
        return _named(raised, data)
    _valid(message, data, defaults)
    return message


def _named(error: InvalidMessage, data: object) -> InvalidMessage:
    """An InvalidMessage names at least one field, each a canonical or a sent one."""
    assert error.status == 422
    assert isinstance(error.errors, dict)
    assert error.errors, "an InvalidMessage must name at least one field"
    allowed = FIELDS | {"body"} | (set(data) if isinstance(data, dict) else set())
    for field, problems in error.errors.items():
        assert isinstance(field, str)
        assert field in allowed, f"{field!r} is neither a canonical nor a sent field"
        assert problems
        assert all(isinstance(p, str) and p for p in problems)
    json.dumps(error.answer(), ensure_ascii=False)  # the 422 body can be written
    return error


def _valid(message: Message, data: object, defaults: Defaults) -> None:
    """A message that got through is valid by every rule, defaults applied."""
    assert isinstance(message, Message)
    assert message.provider in PROVIDERS
    assert is_valid_number(message.to)
    assert 1 <= len(message.text) <= MAX_TEXT
    message.text.encode("utf-8")  # no lone surrogate
    if message.provider == "fluents":
        assert message.workspace is None
        assert message.sender is not None
        assert is_valid_number(message.sender) or message.sender == defaults.sender
    else:
        assert message.sender is None
        assert message.workspace is not None
        assert is_uuid(message.workspace)
    if message.idempotency_key is not None:
        assert 1 <= len(message.idempotency_key) <= MAX_IDEMPOTENCY_KEY
        message.idempotency_key.encode("utf-8")
    assert isinstance(data, dict)
    assert set(data) <= FIELDS


@given(data=python_json_values, defaults=DEFAULTS)
@FAST
def test_any_json_value_is_a_message_or_an_invalid_message(data, defaults):
    check(data, defaults)


@given(data=message_like, defaults=DEFAULTS)
@FAST
def test_almost_valid_messages_are_judged_field_by_field(data, defaults):
    outcome = check(data, defaults)

    if isinstance(outcome, InvalidMessage):
        # Unknown fields are always named, whatever else is wrong.
        for unknown in set(data) - FIELDS:
            assert outcome.errors[unknown] == ["unknown field"]


@given(
    provider=st.sampled_from(PROVIDERS),
    to=st.sampled_from(VALID_NUMBERS),
    text=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=MAX_TEXT),
    key=st.none() | st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=255),
)
@FAST
def test_every_valid_message_is_accepted_unchanged(provider, to, text, key):
    data = {"provider": provider, "to": to, "text": text}
    data.update(
        {"workspace": WORKSPACE} if provider == "lancepilot" else {"from": VALID_NUMBERS[2]}
    )
    if key is not None:
        data["idempotency_key"] = key

    message = check(data, Defaults())

    assert isinstance(message, Message)
    assert (message.provider, message.to, message.text, message.idempotency_key) == (
        provider,
        to,
        text,
        key,
    )


@given(
    field=st.sampled_from(["to", "text", "from", "workspace", "idempotency_key"]),
    value=st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
)
@FAST
def test_lone_surrogates_are_named_not_raised(field, value):
    data = {"provider": "fluents", "to": "+14155550123", "text": "hi", "from": "+12025550143"}
    data[field] = value

    outcome = check(data, Defaults())

    assert isinstance(outcome, InvalidMessage)
    assert field in outcome.errors


@given(size=st.integers(MAX_TEXT + 1, 200_000), char=st.sampled_from(["x", "😀", "\ud800"]))
@settings(max_examples=examples(30), deadline=None)
def test_huge_strings_are_refused_by_length(size, char):
    data = {"provider": "fluents", "to": "+14155550123", "text": char * size}

    outcome = check(data, Defaults(sender="+12025550143"))

    assert isinstance(outcome, InvalidMessage)
    assert outcome.errors["text"] == [f"must be 1 to {MAX_TEXT} characters long"]
