"""relay.intake on any bytes and headers: a message, or a RelayError with a 4xx status."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.auth import AuthKeys
from relay.errors import MalformedBody, PayloadTooLarge, RelayError, Unauthenticated
from relay.intake import MAX_BODY_BYTES, HttpRequest, load_json, prefers_async, read_message
from relay.message import Defaults, Message
from tests.conftest import API_KEY, SIGNING_SECRET, WORKSPACE
from tests.property import examples
from tests.property.strategies import body_bytes, http_requests

KEYS = AuthKeys.from_secret({"api_keys": [API_KEY], "signing_secrets": [SIGNING_SECRET]})
DEFAULTS = Defaults(workspace=WORKSPACE, sender="+12025550143")


class StaticCredentials:
    def auth_keys(self) -> AuthKeys:
        return KEYS


def outcome(request: HttpRequest) -> Message | RelayError:
    """read_message's message, or the RelayError it raised (anything else propagates)."""
    try:
        return read_message(request, StaticCredentials(), DEFAULTS).message  # type: ignore[arg-type]
    except RelayError as raised:
        error = raised
    assert 400 <= error.status < 500, f"{type(error).__name__} is a {error.status}"
    json.dumps(error.answer(), ensure_ascii=False)
    return error


@given(body=body_bytes | st.text(st.characters()))
@settings(max_examples=examples(200), deadline=None)
def test_load_json_returns_an_object_or_raises_malformed_body(body):
    try:
        data = load_json(body)
    except MalformedBody as raised:
        data = raised
    assert isinstance(data, dict) or data.status == 400


@given(depth=st.integers(100, 100_000), kind=st.sampled_from(["[", '{"a":', '{"a":[']))
@settings(max_examples=examples(20), deadline=None)
def test_deep_nesting_is_a_400_not_a_recursion_error(depth, kind):
    closing = {"[": "]", '{"a":': "}", '{"a":[': "]}"}[kind]
    body = "{" + '"x":' + kind * depth + "1" * (kind != "[") + closing * depth + "}"
    try:
        data = load_json(body.encode())
    except MalformedBody:
        return
    assert isinstance(data, dict)


@given(case=http_requests())
@settings(max_examples=examples(200), deadline=None)
def test_read_message_answers_4xx_and_checks_auth_before_the_body(case):
    headers, body, base64_encoded, credential, _ = case
    request = HttpRequest(headers=headers, body=body, base64_encoded=base64_encoded)

    result = outcome(request)

    prefers_async(request.headers)  # never raises
    if credential in ("bad bearer", "bad signature", "none"):
        assert isinstance(result, PayloadTooLarge | Unauthenticated), result
    if isinstance(result, Message):
        assert credential in ("bearer", "signature")
        assert len(request.raw_body()) <= MAX_BODY_BYTES


@given(size=st.integers(MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES), base64_body=st.booleans())
@settings(max_examples=examples(30), deadline=None)
def test_huge_bodies_are_413_before_anything_else(size, base64_body):
    raw = b"{" + b" " * (size - 2) + b"}"
    body = base64.b64encode(raw).decode() if base64_body else raw.decode()

    result = outcome(HttpRequest(headers={}, body=body, base64_encoded=base64_body))

    assert isinstance(result, PayloadTooLarge)
