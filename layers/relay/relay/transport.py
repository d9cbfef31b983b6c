"""HTTP to the providers: one pooled urllib3 client per process, retried within a deadline.

Retries use urllib3's own ``Retry``, extended with what a POST of a customer message needs:
POST is retried (on 5xx, 408, 429 and failures to connect), waits are exponential with full
jitter or the provider's ``Retry-After``, and no wait may cross the deadline. Once the request
may have reached the provider (a read timeout, or the connection dropped before an answer),
nothing is resent here: the provider may already have accepted the message.

Each provider (each origin: scheme, host and port) has ``provider_concurrency`` slots per
process, and a request holds one only while it is with the provider (its retries and their
waits included): the batch's DynamoDB writes happen outside them. A request that cannot get a
slot while a whole attempt would still fit before its end is not sent (``OutOfTime``). Inside
``sends_end_by`` (the SQS batch), a send's deadline is taken when it gets its slot, so that
waiting for one uses up the Lambda's time but not the message's send budget.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import urllib3
from urllib3.exceptions import (
    HTTPError,
    InvalidHeader,
    MaxRetryError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util import Retry, Timeout, parse_url

from relay.errors import OutOfTime

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from types import TracebackType

    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

    from relay.config import Settings
    from relay.providers import OutboundRequest

    RetryHook = Callable[[int, int | None, str | None, float], None]

RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})
MAX_REPLY_BYTES = 64 * 1024  # more than any documented answer; the rest is not read

_thread = threading.local()  # .end: this thread's sends_end_by, if any


@contextlib.contextmanager
def sends_end_by(end: float) -> Iterator[None]:
    """Sends on this thread within the block end by ``end`` (time.monotonic()), the caller's
    hard limit, and take their deadline when they get a provider's slot: ``send_budget`` from
    then, but not past ``end``. They wait for a slot while a whole attempt still fits before
    ``end``; the ``deadline`` given to ``post`` then only says whether there was time to start.
    """
    _thread.end = end
    try:
        yield
    finally:
        _thread.end = None


class Reply(NamedTuple):
    """The provider's final answer (after any retries)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    attempts: int
    retry_after: float | None  # the provider's Retry-After in seconds, when it sent a valid one


class SendFailed(Exception):
    """No answer could be had: connections failed, or the deadline left no room to retry."""

    def __init__(self, detail: str, attempts: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.attempts = attempts


class SendUnconfirmed(Exception):
    """The request may have reached the provider, but no answer came: the outcome is unknown."""

    def __init__(self, detail: str, attempts: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.attempts = attempts


class DeadlineRetry(Retry):
    """``Retry`` whose waits never cross ``deadline``. Build it with ``read=False`` so that a
    read timeout or a dropped connection is raised, not resent."""

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
        retry_after = retry_after_seconds(response)
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
            maxsize=max(settings.max_connections, settings.provider_concurrency),
            block=False,
            retries=False,
            headers={"User-Agent": "webhook-relay/0.1"},
        )
        # Per origin (scheme, host, port): one per provider (two set to one origin share it).
        self._slots: dict[tuple[str | None, str | None, int | None], threading.Semaphore] = {}
        self._slots_lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, url: str, deadline: float) -> Iterator[float]:
        """Hold one of the slots of ``url``'s provider; yields the send's deadline.

        Inside ``sends_end_by`` (an SQS batch) a send waits for a slot only while a whole
        attempt would still fit before the batch's end, and its deadline is taken once the slot
        is held; otherwise (the webhook, one request per process) until ``deadline``. Raises
        OutOfTime, with nothing sent, when no slot comes in time.
        """
        s = self._settings
        one_attempt = min(s.send_budget, s.connect_timeout + s.read_timeout)
        end: float | None = getattr(_thread, "end", None)
        wait = (deadline if end is None else end - one_attempt) - time.monotonic()
        held = self._slot(url)
        if wait < 0 or not held.acquire(timeout=wait):
            raise OutOfTime
        try:
            if end is not None:
                now = time.monotonic()
                if end - now < one_attempt:  # the wait ran over
                    raise OutOfTime
                deadline = min(now + s.send_budget, end)
            yield deadline
        finally:
            held.release()

    def _slot(self, url: str) -> threading.Semaphore:
        """The semaphore bounding requests in flight to ``url``'s provider (its origin)."""
        parsed = parse_url(url)
        origin = (parsed.scheme, parsed.host, parsed.port)
        with self._slots_lock:
            slot = self._slots.get(origin)
            if slot is None:
                slot = self._slots[origin] = threading.BoundedSemaphore(
                    self._settings.provider_concurrency
                )
            return slot

    def post(
        self, request: OutboundRequest, deadline: float, on_retry: RetryHook | None = None
    ) -> Reply:
        """POST ``request``, retrying transient failures while the deadline allows.

        The caller holds the provider's ``slot``.
        """
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
            read=False,  # a read timeout or dropped connection may follow a delivery: never resend
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
                preload_content=False,
            )
        except ReadTimeoutError:
            raise SendUnconfirmed("no answer in time", attempts) from None
        except ProtocolError:
            raise SendUnconfirmed("no answer: the connection dropped", attempts) from None
        except MaxRetryError as exc:
            raise SendFailed(_describe(exc.reason), attempts) from None
        except HTTPError as exc:
            raise SendFailed(_describe(exc), attempts) from None
        return Reply(
            status=response.status,
            headers=response.headers,
            body=_read_body(response, deadline),
            attempts=attempts,
            retry_after=retry_after_seconds(response),
        )


def retry_after_seconds(response: BaseHTTPResponse | None) -> float | None:
    """A valid Retry-After (seconds or HTTP date) in seconds; None when absent or unreadable."""
    if response is None:
        return None
    try:
        return Retry().get_retry_after(response)
    except (InvalidHeader, ValueError, OverflowError):
        return None


def _read_body(response: BaseHTTPResponse, deadline: float) -> bytes:
    """Read the answer's body, bounded in size and by the deadline.

    The status has decided the outcome already; a body that is cut short, dripped slowly or
    broken off only loses detail, never the classification.
    """
    chunks: list[bytes] = []
    size = 0
    complete = False
    try:
        # read1 returns what has arrived, so a dripping body cannot keep us past the deadline.
        while chunk := response.read1(4096):
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_REPLY_BYTES or time.monotonic() > deadline:
                break
        else:
            complete = True
    except (HTTPError, OSError):
        pass
    if complete:
        response.release_conn()  # back to the pool for the next send
    else:
        response.close()  # unread bytes would corrupt the next answer on this connection
    return b"".join(chunks)[:MAX_REPLY_BYTES]


def _describe(error: BaseException | None) -> str:
    """A cause safe to show and log: from the error's class, never its text (that has the URL)."""
    if error is None:
        return "connection failed"
    name = type(error).__name__
    return {
        "NewConnectionError": "could not connect",
        "ConnectTimeoutError": "connection timed out",
        "SSLError": "TLS failed",
        "ResponseError": "no time left to retry",
    }.get(name, f"connection failed ({name})")
