"""Replays and signatures: a signed request is delivered once, stale or forged ones never, and
every secret comparison is constant-time. A refused or unavailable request keeps no record: its
replay is sent. One that got no answer (504) is held, and its replay is not sent again."""

from __future__ import annotations

import ast
import inspect
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import auth
from relay.auth import TOLERANCE_SECONDS, AuthKeys, authenticate, sign
from relay.errors import Unauthenticated
from relay_local.sandbox import Fault
from tests.conftest import API_KEY, SECOND_SIGNING_SECRET, SIGNING_SECRET, lancepilot_message
from tests.property import examples
from tests.property.strategies import clean_text, signature_headers

KEYS = AuthKeys.from_secret(
    {"api_keys": [API_KEY], "signing_secrets": [SIGNING_SECRET, SECOND_SIGNING_SECRET]}
)
NOW = 1_795_453_200
FAST = settings(max_examples=examples(200), deadline=None)
HANDLER = settings(
    max_examples=examples(15),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def signed_at(body: bytes, timestamp: int, msg_id: str = "msg_1", secret: str = SIGNING_SECRET):
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def accepted(headers: dict[str, str], body: bytes, now: float = NOW) -> bool:
    try:
        return authenticate(headers, body, KEYS, now=now) == "signature"
    except Unauthenticated:
        return False


# --- over the handler --------------------------------------------------------------------------


@given(text=clean_text, async_=st.booleans())
@HANDLER
def test_a_signed_request_sent_twice_is_delivered_once(webhook, lancepilot, text, async_):
    lancepilot.reset()
    msg_id = f"msg_{uuid.uuid4().hex}"  # a fresh one: a webhook-id reused for another body is 422
    body = json.dumps(lancepilot_message(text=text)).encode()
    headers = {"content-type": "application/json", **signature_headers(body, msg_id=msg_id)}
    if async_:
        headers["prefer"] = "respond-async"

    first = webhook.post(raw=body, headers=headers)
    again = webhook.post(raw=body, headers=headers)

    assert first.status == again.status == (202 if async_ else 201)
    assert again.json == first.json
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert len(lancepilot.received) == (0 if async_ else 1)  # queued: the poller would send it


# The provider's answer to the first send, by the relay's answer to it. Each fails at once: a
# refusal is not retried, a Retry-After beyond the send budget is passed on.
FAILURES = {
    502: Fault.status(422, {"message": "Validation error", "errors": {"number": ["not on it"]}}),
    503: Fault.status(503, retry_after="120"),
}


@pytest.mark.parametrize("status", sorted(FAILURES))
@given(text=clean_text)
@HANDLER
def test_a_replay_after_a_failure_is_sent_again_and_after_a_delivery_is_not(
    webhook, lancepilot, text, status
):
    lancepilot.reset()
    lancepilot.enqueue(FAILURES[status])
    msg_id = f"msg_{uuid.uuid4().hex}"
    body = json.dumps(lancepilot_message(text=text)).encode()
    headers = {"content-type": "application/json", **signature_headers(body, msg_id=msg_id)}

    failed = webhook.post(raw=body, headers=headers)
    retried = webhook.post(raw=body, headers=headers)
    replayed = webhook.post(raw=body, headers=headers)

    assert failed.status == status
    # A failure leaves no record: the same webhook-id is sent again ...
    assert retried.status == 201
    assert "idempotent-replayed" not in retried.headers
    assert retried.json["id"] == failed.json["id"]
    # ... and once it is delivered, a replay gets that answer and is not sent.
    assert (replayed.status, replayed.json) == (201, retried.json)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert len(lancepilot.received) == 2
    assert len(lancepilot.accepted()) == 1


@given(text=clean_text, async_=st.booleans())
@HANDLER
def test_a_replay_after_a_504_gets_the_same_504_and_is_not_sent_again(
    webhook, lancepilot, text, async_
):
    lancepilot.reset()
    # No answer: the provider read the request (it may have the message), then the line dropped
    # (a hang past the read timeout is the same to the relay: tests/integration/test_held.py).
    lancepilot.enqueue(Fault.reset_after_read())
    msg_id = f"msg_{uuid.uuid4().hex}"
    body = json.dumps(lancepilot_message(text=text)).encode()
    headers = {"content-type": "application/json", **signature_headers(body, msg_id=msg_id)}

    in_doubt = webhook.post(raw=body, headers=headers)
    # The replay may come either way: the key's one record answers it.
    prefer = {"prefer": "respond-async"} if async_ else {}
    replayed = webhook.post(raw=body, headers={**headers, **prefer})

    # The message was held (parked for review), not left for a replay to send a second time.
    assert (in_doubt.status, in_doubt.json["status"]) == (504, "held")
    assert "idempotent-replayed" not in in_doubt.headers
    assert (replayed.status, replayed.json) == (504, in_doubt.json)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert len(lancepilot.received) == 1
    assert lancepilot.accepted() == []


# Headers the signature does not cover: a replayer can add or change any of them.
unsigned_headers = st.fixed_dictionaries(
    {},
    optional={
        "idempotency-key": st.text(
            st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
        ),
        "authorization": st.just("Bearer not-a-key"),
        "x-forwarded-for": st.just("203.0.113.7"),
    },
)


@given(replayed=unsigned_headers, async_=st.booleans())
@HANDLER
def test_a_replay_with_unsigned_headers_changed_is_not_sent_again(
    webhook, lancepilot, replayed, async_
):
    lancepilot.reset()
    msg_id = f"msg_{uuid.uuid4().hex}"
    body = json.dumps(lancepilot_message()).encode()
    headers = {"content-type": "application/json", **signature_headers(body, msg_id=msg_id)}

    first = webhook.post(raw=body, headers=headers)
    prefer = {"prefer": "respond-async"} if async_ else {}
    again = webhook.post(raw=body, headers={**headers, **replayed, **prefer})

    assert first.status == 201
    assert (again.status, again.json["id"]) == (201, first.json["id"])
    assert again.headers["idempotent-replayed"] == "true"
    assert len(lancepilot.received) == 1


@given(
    age=st.integers(TOLERANCE_SECONDS + 1, 10**9) | st.integers(-(10**9), -TOLERANCE_SECONDS - 1)
)
@HANDLER
def test_a_signature_outside_five_minutes_is_refused_401(webhook, lancepilot, age):
    lancepilot.reset()
    body = json.dumps(lancepilot_message()).encode()
    headers = {"content-type": "application/json", **signature_headers(body, age=age)}

    answer = webhook.post(raw=body, headers=headers)

    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert lancepilot.received == []


# --- auth.authenticate, with a fixed clock -------------------------------------------------------


@given(body=st.binary(max_size=200), skew=st.integers(-TOLERANCE_SECONDS, TOLERANCE_SECONDS))
@FAST
def test_a_signature_within_the_tolerance_is_accepted(body, skew):
    assert accepted(signed_at(body, NOW + skew), body)


@given(
    body=st.binary(max_size=200),
    skew=st.integers(TOLERANCE_SECONDS + 1, 10**11),
    sign_=st.sampled_from([1, -1]),
)
@FAST
def test_a_signature_outside_the_tolerance_is_refused(body, skew, sign_):
    assert not accepted(signed_at(body, NOW + sign_ * skew), body)


@given(body=st.binary(min_size=1, max_size=200), data=st.data())
@FAST
def test_any_change_to_the_signed_content_is_refused(body, data):
    headers = signed_at(body, NOW)
    part = data.draw(st.sampled_from(["body", "id", "timestamp", "signature"]))
    if part == "body":
        index = data.draw(st.integers(0, len(body) - 1))
        body = body[:index] + bytes([body[index] ^ 1]) + body[index + 1 :]
    elif part == "id":
        headers["webhook-id"] += data.draw(st.text(min_size=1, max_size=3))
    elif part == "timestamp":
        headers["webhook-timestamp"] = str(NOW + data.draw(st.integers(1, 60)))
    else:
        signature = headers["webhook-signature"]
        index = data.draw(st.integers(3, len(signature) - 2))  # leave the "=" padding alone
        swapped = "A" if signature[index] != "A" else "B"
        headers["webhook-signature"] = signature[:index] + swapped + signature[index + 1 :]

    assert not accepted(headers, body)


def test_a_signature_made_with_a_retired_or_foreign_secret_is_refused():
    body = b"{}"
    foreign = "whsec_" + "c29tZW9uZS1lbHNlcy1zZWNyZXQ="
    assert accepted(signed_at(body, NOW, secret=SECOND_SIGNING_SECRET), body)
    assert not accepted(signed_at(body, NOW, secret=foreign), body)


# --- constant-time comparisons -------------------------------------------------------------------


def test_secrets_are_compared_with_hmac_compare_digest_only():
    source = inspect.getsource(auth)
    tree = ast.parse(source)
    compared = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert "compare_digest" in compared

    # No == or != anywhere near a key, a token, a signature or a digest.
    secret_names = ("key", "token", "candidate", "sig", "offered", "expected", "mac", "digest")
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Eq | ast.NotEq | ast.Is | ast.IsNot) for op in node.ops
        ):
            text = ast.get_source_segment(source, node) or ""
            assert not any(name in text.lower() for name in secret_names), (
                f"non-constant-time comparison in relay/auth.py: {text}"
            )


def test_every_key_is_compared_so_timing_does_not_tell_which_matched(monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = AuthKeys.from_secret({"api_keys": [API_KEY, "second-key", "third-key"]})

    authenticate({"authorization": f"Bearer {API_KEY}"}, b"", keys)

    assert len(calls) == 3  # no early exit on the first match


@pytest.mark.parametrize(
    "timestamp",
    [
        "\u0661\u0662\u0663",  # Arabic-Indic digits: isdigit() but not ASCII
        str(NOW - TOLERANCE_SECONDS - 1),  # stale
        str(NOW + TOLERANCE_SECONDS + 1),  # from the future
        "",
        "-1",
        "1795453200.0",
        "0" * 13,  # longer than any timestamp the relay reads
    ],
)
def test_a_bad_timestamp_is_refused_before_any_hmac_is_computed(monkeypatch, timestamp):
    body = b"{}"
    headers = {**signed_at(body, NOW), "webhook-timestamp": timestamp}
    macs = []
    real = auth.hmac.new

    def counting(*args, **kwargs):
        macs.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(auth.hmac, "new", counting)

    assert not accepted(headers, body)
    assert macs == [], "an HMAC was computed before the timestamp was refused"

    # The same request with its good timestamp is checked against every signing key.
    assert accepted(signed_at(body, NOW), body)
    assert len(macs) == len(KEYS.signing_keys) + 1  # + 1: signed_at's own sign()
