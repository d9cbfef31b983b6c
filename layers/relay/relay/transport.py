"""HTTP to the providers: one pooled urllib3 client per process, retried within a deadline.

Retries use urllib3's own ``Retry``, extended with what a POST of a customer message needs:
POST is retried (on 5xx, 408, 429 and connection failures), waits are exponential with full
jitter or the provider's ``Retry-After``, no wait may cross the deadline, and a read timeout is
never retried here, because the provider may already have accepted the message.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import urllib3
from urllib3.exceptions import (
    HTTPError,
    InvalidHeader,
    MaxRetryError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util import Retry, Timeout

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

    from relay.config import Settings
    from relay.providers import OutboundRequest

    RetryHook = Callable[[int, int | None, str | None, float], None]

RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})


@dataclass(frozen=True)
class Reply:
    """The provider's final answer (after any retries)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    attempts: int


class SendFailed(Exception):
    """No answer could be had: connections failed, or the deadline left no room to retry."""

    def __init__(self, detail: str, attempts: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.attempts = attempts


class SendTimedOut(Exception):
    """The request was sent and no answer came before the read timeout: outcome unknown."""

    def __init__(self, attempts: int) -> None:
        super().__init__("read timed out")
        self.attempts = attempts


class DeadlineRetry(Retry):
    """``Retry`` that never waits past ``deadline`` and never resends after a read timeout."""

    def __init__(
        self,
        *args: Any,
        deadline: float = float("inf"),
        attempt_time: float = 0.0,
        on_retry: RetryHook | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.attempt_time = attempt_time  # the longest an attempt can take (connect + read)
        self.on_retry = on_retry
        self.wait = 0.0

    def new(self, **kw: Any) -> DeadlineRetry:
        kw.setdefault("deadline", self.deadline)
        kw.setdefault("attempt_time", self.attempt_time)
        kw.setdefault("on_retry", self.on_retry)
        return super().new(**kw)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> DeadlineRetry:
        if isinstance(error, ReadTimeoutError):
            # Ambiguous: the provider may have the message, and resending could duplicate it.
            raise error
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        retry.wait = retry.planned_wait(response)
        if time.monotonic() + retry.wait + self.attempt_time > self.deadline:
            reason = error or ResponseError(
                f"no time left to retry status {response and response.status}"
            )
            raise MaxRetryError(_pool, url or "", reason)  # type: ignore[arg-type]
        if self.on_retry is not None:
            status = response.status if response is not None else None
            self.on_retry(
                len(retry.history), status, type(error).__name__ if error else None, retry.wait
            )
        return retry

    def planned_wait(self, response: BaseHTTPResponse | None) -> float:
        """The provider's Retry-After when it gave one, else capped exponential full jitter."""
        if response is not None:
            try:
                retry_after = self.get_retry_after(response)
            except InvalidHeader:
                retry_after = None
            if retry_after is not None:
                return retry_after
        ceiling = min(self.backoff_max, self.backoff_factor * 2 ** (len(self.history) - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        if self.wait > 0:
            time.sleep(self.wait)


class Transport:
    """The process's HTTP client for provider calls. Create once at init; thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # maxsize > 1 so concurrent sends keep their connections instead of discarding them.
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=settings.max_connections,
            block=False,
            retries=False,
            headers={"User-Agent": "webhook-relay/0.1"},
        )

    def post(
        self, request: OutboundRequest, deadline: float, on_retry: RetryHook | None = None
    ) -> Reply:
        """POST ``request``, retrying transient failures while the deadline allows."""
        s = self._settings
        attempt_time = s.connect_timeout + s.read_timeout
        room = deadline - time.monotonic()
        if room <= 0.05:
            raise SendFailed("no time left to send", 0)
        attempts = 1

        def count(retry_number: int, status: int | None, error: str | None, wait: float) -> None:
            nonlocal attempts
            attempts = retry_number + 1
            if on_retry is not None:
                on_retry(retry_number, status, error, wait)

        retries = DeadlineRetry(
            total=s.max_attempts - 1,
            allowed_methods=None,  # POST too: the statuses and errors retried mean "not processed"
            status_forcelist=RETRY_STATUSES,
            backoff_factor=s.backoff_base,
            backoff_max=s.backoff_max,
            raise_on_status=False,
            redirect=False,
            deadline=deadline,
            attempt_time=attempt_time,
            on_retry=count,
        )
        # An attempt may not outlast the deadline either.
        timeout = Timeout(connect=min(s.connect_timeout, room), read=min(s.read_timeout, room))
        try:
            response = self._pool.request(
                "POST",
                request.url,
                body=request.body,
                headers=request.headers,
                retries=retries,
                timeout=timeout,
            )
        except ReadTimeoutError:
            raise SendTimedOut(attempts) from None
        except MaxRetryError as exc:
            raise SendFailed(_describe(exc.reason), attempts) from None
        except HTTPError as exc:
            raise SendFailed(_describe(exc), attempts) from None
        return Reply(response.status, response.headers, response.data, attempts)


def _describe(error: BaseException | None) -> str:
    """A cause safe to show and log: from the error's class, never its text (that has the URL)."""
    if error is None:
        return "connection failed"
    name = type(error).__name__
    return {
        "NewConnectionError": "could not connect",
        "ConnectTimeoutError": "connection timed out",
        "ProtocolError": "connection dropped",
        "SSLError": "TLS failed",
        "ResponseError": "no time left to retry",
    }.get(name, f"connection failed ({name})")
