"""The webhook handler, through its real entry point, on hostile requests.

Whatever the body, headers or base64 flag: never a 5xx, always a documented JSON answer, and
a refused request (any 4xx) never reaches a provider.
"""

from __future__ import annotations

import base64
import copy
import json

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from relay.intake import MAX_BODY_BYTES, prefers_async
from relay_local.lambda_runtime import LambdaContext
from tests.conftest import API_KEY, load_event
from tests.property import examples
from tests.property.openapi import answer_problems
from tests.property.strategies import (
    content_types,
    header_names,
    header_values,
    http_requests,
    oversized_request,
    prefers,
    valid_messages,
)

EVENT = load_event("http_post_lancepilot.json")
HANDLER_SETTINGS = settings(
    max_examples=examples(120),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def invoke(webhook, headers: dict[str, str], body: str, base64_encoded: bool):
    event_ = copy.deepcopy(EVENT)
    event_.update(headers=headers, body=body, isBase64Encoded=base64_encoded)
    result = webhook.module.lambda_handler(event_, LambdaContext())
    answer_headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
    # What goes on the wire: the Lambda runtime (python3.12+) and API Gateway send UTF-8.
    wire = result["body"].encode("utf-8")
    return result["statusCode"], answer_headers, json.loads(wire)


@given(request=http_requests())
# Bodies over 64 KiB, which the generated ones rarely are: the 413 is checked on every run.
@example(request=oversized_request("none", base64_encoded=False))
@example(request=oversized_request("bearer", base64_encoded=False))
@example(request=oversized_request("bearer", base64_encoded=True))
@example(request=oversized_request("bad bearer", base64_encoded=True, damaged=True))
@example(request=oversized_request("bearer", base64_encoded=True, damaged=True))
@HANDLER_SETTINGS
def test_hostile_requests_get_a_documented_answer_and_send_nothing_when_refused(
    webhook, lancepilot, fluents, request
):
    headers, body, base64_encoded, credential, raw = request
    lancepilot.reset()
    fluents.reset()

    status, answer_headers, answer = invoke(webhook, headers, body, base64_encoded)

    event(f"{credential}: {status}")
    assert status < 500, answer
    assert answer_headers["content-type"] == "application/json"
    assert answer_problems(status, answer_headers, answer) == []
    sent = lancepilot.received + fluents.received
    if status >= 400:
        assert isinstance(answer["message"], str)
        assert answer["message"]
        assert sent == [], f"a {status} answer, yet a provider received {sent}"
    # The size is checked first, before the credential, whichever it is. A base64 body that does
    # not decode is measured by its encoded length (three bytes for every four characters, junk
    # included): never less than the bytes it encodes.
    if len(raw) > MAX_BODY_BYTES:
        assert status == 413, answer
    elif credential in ("bad bearer", "bad signature", "none"):
        # So damaged base64 of a body just under the limit may be refused as too large.
        if base64_encoded and len(body) * 3 // 4 > MAX_BODY_BYTES:
            assert status in (401, 413), answer
        else:
            assert status == 401, answer
    if status == 201:
        replayed = answer_headers.get("idempotent-replayed") == "true"
        assert len(sent) == (0 if replayed else 1)
    assert lancepilot.violations() == []
    assert fluents.violations() == []


@given(
    message=valid_messages,
    extra=st.dictionaries(header_names.map(str.lower), header_values, max_size=3),
    content_type=st.none() | content_types,
    prefer=st.none() | prefers | header_values,
    key=st.none() | header_values,
    base64_encoded=st.booleans(),
)
@HANDLER_SETTINGS
def test_valid_messages_with_odd_headers_are_delivered_queued_or_refused_cleanly(
    webhook, lancepilot, fluents, message, extra, content_type, prefer, key, base64_encoded
):
    raw = json.dumps(message, ensure_ascii=False).encode()
    headers = {**extra, "authorization": f"Bearer {API_KEY}"}
    for name, value in (
        ("content-type", content_type),
        ("prefer", prefer),
        ("idempotency-key", key),
    ):
        if value is not None:
            headers[name] = value
    body = base64.b64encode(raw).decode() if base64_encoded else raw.decode()
    lancepilot.reset()
    fluents.reset()

    status, answer_headers, answer = invoke(webhook, headers, body, base64_encoded)

    event(str(status))
    assert answer_problems(status, answer_headers, answer) == []
    assert status in (201, 202, 415, 422), answer
    sent = lancepilot.received + fluents.received
    replayed = answer_headers.get("idempotent-replayed") == "true"
    if status == 201:
        assert answer["provider"] == message["provider"]
        assert len(sent) == (0 if replayed else 1)
    elif status == 202:  # queued now, or the replay of an earlier queued answer for this key
        assert replayed or prefers_async({"prefer": prefer or ""})
        assert sent == []
    else:
        assert sent == []
    if status == 422:  # only a key reused for another message
        assert set(answer["errors"]) == {"idempotency_key"}
    assert lancepilot.violations() == []
    assert fluents.violations() == []


def test_an_unknown_field_named_with_a_lone_surrogate_gets_an_answer_that_can_be_sent(
    webhook, lancepilot
):
    """JSON allows "\\ud800" in a key and the 422 names the field: the answer is written
    ASCII-escaped, so it stays valid UTF-8 for API Gateway (and the local HTTP API)."""
    raw = b'{"provider": "lancepilot", "to": "+14155550123", "text": "hi", "\\ud800": 1}'
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}

    status, _, answer = invoke(webhook, headers, raw.decode(), False)

    assert status == 422
    assert answer["errors"]["\ud800"] == ["unknown field"]
    assert lancepilot.received == []
