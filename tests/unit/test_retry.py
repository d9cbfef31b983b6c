"""DeadlineRetry's arithmetic: backoff bounds, Retry-After, and the deadline with real settings."""

from __future__ import annotations

import time

import pytest
from urllib3 import HTTPResponse
from urllib3.exceptions import MaxRetryError

from relay.config import Settings
from relay.runtime import AFTER_SEND_SECONDS, ANSWER_MARGIN_SECONDS
from relay.secrets import AWS_CALL_LIMIT_SECONDS
from relay.transport import DeadlineRetry

TEMPLATE_TIMEOUT_S = 28  # template.yaml's WebhookFunction Timeout
API_GATEWAY_LIMIT_S = 29


def retry(**kwargs) -> DeadlineRetry:
    defaults = dict(
        total=3,
        read=False,
        allowed_methods=None,
        status_forcelist={503},
        backoff_factor=0.25,
        backoff_max=4.0,
        raise_on_status=False,
    )
    return DeadlineRetry(**{**defaults, **kwargs})


def answer(status: int = 503, retry_after: str | None = None) -> HTTPResponse:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return HTTPResponse(status=status, headers=headers, preload_content=False)


def test_backoff_is_full_jitter_under_a_capped_exponential():
    r = retry(total=10, deadline=time.monotonic() + 3600)
    for n in range(1, 9):
        r = r.increment("POST", "/x", response=answer())
        ceiling = min(4.0, 0.25 * 2 ** (n - 1))
        assert 0 <= r.wait <= ceiling


def test_retry_after_is_the_wait():
    r = retry(deadline=time.monotonic() + 60).increment(
        "POST", "/x", response=answer(retry_after="7")
    )
    assert r.wait == 7


def test_no_retry_whose_wait_and_attempt_would_cross_the_deadline():
    r = retry(deadline=time.monotonic() + 10, attempt_time=4)
    with pytest.raises(MaxRetryError):
        r.increment("POST", "/x", response=answer(retry_after="7"))  # 7 + 4 > 10
    assert retry(deadline=time.monotonic() + 12, attempt_time=4).increment(
        "POST", "/x", response=answer(retry_after="7")
    )


def test_every_retry_is_reported_to_the_hook():
    seen = []
    r = retry(deadline=time.monotonic() + 60, on_retry=lambda *a: seen.append(a))
    r.increment("POST", "/x", response=answer(retry_after="1")).increment(
        "POST", "/x", response=answer(retry_after="2")
    )
    assert [(n, status, wait) for n, status, _, wait in seen] == [(1, 503, 1), (2, 503, 2)]


def test_template_settings_answer_within_api_gateways_limit():
    """Worst case: the budget is spent on waits and attempts, then the answer is shaped."""
    s = Settings.from_env(
        {"PROVIDER_TOKENS_SECRET": "t", "RELAY_AUTH_SECRET": "a", "IDEMPOTENCY_TABLE": "i"}
    )
    room = min(s.send_budget, TEMPLATE_TIMEOUT_S - AFTER_SEND_SECONDS)
    # No retry starts unless wait + a whole attempt end before the deadline, and the first
    # attempt is cut to the room left; so sending ends by `room` at the latest. Then the
    # record's save and, for a send that got no answer, its parking, each bounded, must fit
    # before the Lambda's own timeout: else it times out with the record still in progress.
    after = 2 * AWS_CALL_LIMIT_SECONDS + ANSWER_MARGIN_SECONDS
    assert after == AFTER_SEND_SECONDS
    assert room + after <= TEMPLATE_TIMEOUT_S < API_GATEWAY_LIMIT_S
    assert s.connect_timeout + s.read_timeout < room
