"""Delivery: send one validated message through its provider and classify what happened."""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from relay.errors import ProviderRejected, ProviderTimeout, ProviderUnavailable, RelayError
from relay.observability import logger, outcomes, status_class, tracer
from relay.phone import mask
from relay.providers import build_request, read_error, read_receipt
from relay.transport import RETRY_STATUSES, SendFailed, SendUnconfirmed

if TYPE_CHECKING:
    from collections.abc import Mapping

    from relay.config import ProviderName, Settings
    from relay.message import Message
    from relay.secrets import Credentials
    from relay.transport import Reply, Transport

MAX_RETRY_AFTER = 3600


class Delivery(NamedTuple):
    """A message the provider accepted."""

    relay_id: str
    provider: ProviderName
    provider_status: int
    receipt: dict[str, Any] | None  # the provider's answer, when it sent a JSON object
    attempts: int
    latency_ms: float

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Delivery:
        """A delivery as the idempotency store kept it (extra keys, like "replayed", ignored)."""
        return cls(**{name: record[name] for name in cls._fields})


class Deliverer:
    """Sends messages; one per process, sharing the transport's connection pool."""

    def __init__(self, settings: Settings, transport: Transport, credentials: Credentials) -> None:
        self._settings = settings
        self._transport = transport
        self._credentials = credentials

    def deliver(self, message: Message, relay_id: str, deadline: float) -> Delivery:
        """Send ``message`` before ``deadline`` (time.monotonic()); raise a RelayError if it fails.

        ProviderRejected is final; ProviderUnavailable and ProviderTimeout leave the message
        unsent or in doubt, and the caller decides whether to try again.
        """
        token = self._credentials.provider_token(message.provider)
        request = build_request(message, token, self._settings, relay_id=relay_id)
        context = {"relay_id": relay_id, "provider": message.provider, "to": mask(message.to)}

        def on_retry(retry: int, status: int | None, error: str | None, wait: float) -> None:
            # Retried without a status means it could not connect: a read timeout is never retried.
            outcomes.count(
                "ProviderErrors", message.provider, ("StatusClass", status_class(status))
            )
            logger.info(
                "provider attempt failed, retrying",
                extra={
                    **context,
                    "retry": retry,
                    "provider_status": status,
                    "error": error,
                    "wait_s": round(wait, 3),
                },
            )

        # The provider's slot first (OutOfTime if none comes in time): waiting for one is
        # neither latency nor a provider error. A subsegment per send: provider and outcome as
        # annotations, never the message.
        with contextlib.ExitStack() as slot:
            deadline = slot.enter_context(self._transport.slot(request.url, deadline))
            with tracer.provider.in_subsegment(f"## {message.provider} send") as subsegment:
                subsegment.put_annotation("provider", message.provider)
                started = time.monotonic()
                error: RelayError
                try:
                    try:
                        reply = self._transport.post(request, deadline, on_retry)
                    finally:
                        # What follows (the receipt, logs, metrics, closing the subsegment) is
                        # the relay's own work: the provider's next send need not wait for it.
                        slot.close()
                    delivery = self._settle(message, relay_id, reply, started, context)
                except SendUnconfirmed as exc:
                    error = ProviderTimeout(message.provider, exc.detail)
                    outcomes.count("AmbiguousSends", message.provider)
                    self._fail(error, relay_id, started, exc.attempts, context, subsegment)
                except SendFailed as exc:
                    error = ProviderUnavailable(message.provider, exc.detail, None, None)
                    self._fail(error, relay_id, started, exc.attempts, context, subsegment)
                except RelayError as refused:
                    self._fail(refused, relay_id, started, reply.attempts, context, subsegment)
                subsegment.put_annotation("outcome", "delivered")
                subsegment.put_annotation("provider_status", str(delivery.provider_status))
                return delivery

    def deliver_record(
        self, request: dict[str, Any], message: Message, relay_id: str, deadline: float
    ) -> dict[str, Any]:
        """``deliver`` in the form idempotency stores: ``request`` is the idempotent payload."""
        return self.deliver(message, relay_id, deadline)._asdict()

    def _settle(
        self, message: Message, relay_id: str, reply: Reply, started: float, context: dict[str, str]
    ) -> Delivery:
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        if 200 <= reply.status < 300:
            logger.info(
                "message delivered",
                extra={
                    **context,
                    "outcome": "delivered",
                    "provider_status": reply.status,
                    "attempts": reply.attempts,
                    "latency_ms": latency_ms,
                },
            )
            outcomes.count("MessagesDelivered", message.provider)
            outcomes.latency(message.provider, latency_ms)
            return Delivery(
                relay_id=relay_id,
                provider=message.provider,
                provider_status=reply.status,
                receipt=read_receipt(message.provider, reply.body),
                attempts=reply.attempts,
                latency_ms=latency_ms,
            )
        if reply.status in RETRY_STATUSES:
            raise ProviderUnavailable(
                message.provider, f"HTTP {reply.status}", reply.status, _retry_after(reply)
            )
        raise ProviderRejected(message.provider, reply.status, read_error(reply.body))

    @staticmethod
    def _fail(
        error: RelayError,
        relay_id: str,
        started: float,
        attempts: int,
        context: dict[str, str],
        subsegment: Any,
    ) -> NoReturn:
        error.relay_id = relay_id
        status = getattr(error, "provider_status", None)
        failure = "timeout" if isinstance(error, ProviderTimeout) else "connection"
        outcomes.count(
            "ProviderErrors", context["provider"], ("StatusClass", status_class(status, failure))
        )
        subsegment.put_annotation("outcome", error.reason)
        if status is not None:
            subsegment.put_annotation("provider_status", str(status))
        logger.warning(
            "message not delivered",
            extra={
                **context,
                "outcome": error.reason,
                "provider_status": getattr(error, "provider_status", None),
                "attempts": attempts,
                "latency_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        raise error


def _retry_after(reply: Reply) -> int | None:
    """The provider's Retry-After in whole seconds, bounded; None when it gave none."""
    if reply.retry_after is None:
        return None
    return min(MAX_RETRY_AFTER, max(1, math.ceil(reply.retry_after)))
