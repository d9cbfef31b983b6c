"""Backoff by receive count, the async preference, and which idempotency key a request has."""

from __future__ import annotations

import pytest

from relay.intake import caller_key, prefers_async
from relay.message import Message
from relay.queue_worker import MAX_VISIBILITY, redelivery_delay


@pytest.mark.parametrize(
    ("receive", "low", "high"),
    [(1, 15, 30), (2, 30, 60), (3, 60, 120), (5, 240, 480), (9, 450, 900)],
)
def test_delay_doubles_per_receive_with_equal_jitter_under_the_cap(receive, low, high):
    delays = {redelivery_delay(receive, 0, base=30, cap=900) for _ in range(200)}
    assert min(delays) >= low
    assert max(delays) <= high
    assert len(delays) > 1  # jittered


def test_retry_after_wins_when_longer_but_never_past_sqs_limit():
    assert redelivery_delay(1, 600, base=30, cap=900) == 600
    assert redelivery_delay(1, 10**9, base=30, cap=900) == MAX_VISIBILITY


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("respond-async", True),
        ("Respond-Async", True),
        ("return=minimal, respond-async", True),
        ("respond-async; wait=10", True),
        ("return=minimal", False),
        ("", False),
        ("respond-asynchronously", False),
    ],
)
def test_prefer_header(header, expected):
    assert prefers_async({"prefer": header}) is expected


def test_key_order_body_then_header_then_webhook_id():
    message = Message("fluents", "+14155550123", "hi", sender="+12025550143")
    headers = {"idempotency-key": "h", "webhook-id": "w"}
    keyed = message._replace(idempotency_key="b")
    assert caller_key(keyed, headers, signed=False) == "b"
    assert caller_key(message, headers, signed=False) == "h"
    assert caller_key(message, {"webhook-id": "w"}, signed=False) == "w"
    assert caller_key(message, {"idempotency-key": "  "}, signed=False) is None


def test_a_signed_request_is_keyed_by_what_its_signature_covers():
    # Idempotency-Key is not signed: a replay that adds or changes it must not get a new key.
    message = Message("fluents", "+14155550123", "hi", sender="+12025550143")
    headers = {"idempotency-key": "h", "webhook-id": "w"}
    assert caller_key(message, headers, signed=True) == "w"
    keyed = message._replace(idempotency_key="b")
    assert caller_key(keyed, headers, signed=True) == "b"
