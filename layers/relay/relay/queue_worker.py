"""The SQS side: deliver one queued message, or decide between redelivery and the dead letters.

Every message ends in exactly one of: delivered (or recognised as already delivered), handed
back for redelivery with a backoff, or parked in the dead-letter queue with its reason. A
message is never dropped without a home: if parking it fails, it is handed back instead.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from relay.errors import (
    InvalidMessage,
    MalformedBody,
    OutOfTime,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RelayError,
)
from relay.idempotency import QUEUED_BY, QUEUED_BY_WEBHOOK, REPLAYED, request_for
from relay.ids import queued_relay_id
from relay.intake import load_json
from relay.message import parse_message
from relay.observability import logger, outcomes
from relay.queues import POSSIBLY_DELIVERED, park_reason

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef

    from relay.config import Settings
    from relay.delivery import Deliverer
    from relay.idempotency import Idempotency
    from relay.message import Defaults, Message
    from relay.queues import ParkedKind, Queues

Outcome = Literal["delivered", "duplicate", "dead_lettered"]
MAX_VISIBILITY = 12 * 3600  # SQS's ceiling
# MessagesFailed's Reason for each ErrorKind, in the HTTP path's words.
PARKED_REASON = {"invalid": "invalid", "permanent": "provider_rejected", "exhausted": "exhausted"}


class QueuedMessage(NamedTuple):
    """One SQS message as the relay needs it (adapted from the Lambda event by the handler)."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: Mapping[str, MessageAttributeValueTypeDef]  # message attributes, boto3's shape
    receive_count: int

    def attribute(self, name: str) -> str | None:
        """A string attribute's value, if the message has it and it is not blank."""
        attribute = self.attributes.get(name)
        value = attribute.get("StringValue") if attribute is not None else None
        return (value.strip()[:255] or None) if isinstance(value, str) else None

    @property
    def flagged_possibly_delivered(self) -> bool:
        """Whether an earlier parking flagged it: redriven by an operator who knew the risk."""
        return (self.attribute(POSSIBLY_DELIVERED) or "").lower() == "true"


class Redeliver(Exception):
    """Hand the message back to the queue; it comes back after ``delay`` seconds."""

    def __init__(self, reason: str, delay: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class QueueWorker:
    """Delivers queued messages; one per process, safe to call from several threads."""

    def __init__(
        self,
        settings: Settings,
        defaults: Defaults,
        deliverer: Deliverer,
        queues: Queues,
        idempotency: Idempotency,
    ) -> None:
        self._settings = settings
        self._defaults = defaults
        self._deliverer = deliverer
        self._queues = queues
        self._idempotency = idempotency
        self._deliver_once = idempotency.once(deliverer.deliver_record)

    def parse(self, queued: QueuedMessage) -> Message | RelayError:
        """The message in the body, or why it cannot be one."""
        try:
            return parse_message(load_json(queued.body), self._defaults)
        except (MalformedBody, InvalidMessage) as error:
            return error

    def process(
        self, queued: QueuedMessage, message: Message | RelayError, deadline: float | None
    ) -> Outcome:
        """Deliver, park or hand back one message; Redeliver (raised) has set its backoff.

        ``deadline`` None means no time is left to send before the Lambda's own timeout.
        """
        logger.thread_safe_append_keys(correlation_id=queued.message_id)
        provider = None if isinstance(message, RelayError) else message.provider
        try:
            outcome = self.handle(queued, message, deadline)
        except Redeliver as redeliver:
            outcomes.count("MessagesRetried", provider, ("Reason", redeliver.reason))
            self._delay(queued, redeliver, provider)
            raise
        finally:
            logger.thread_safe_clear_keys()
        if outcome == "duplicate":
            outcomes.count("DuplicatesSuppressed", provider)
        return outcome

    def _delay(self, queued: QueuedMessage, redeliver: Redeliver, provider: str | None) -> None:
        try:
            self._queues.delay(queued.receipt_handle, redeliver.delay)
        except Exception:
            # The message still comes back, after the queue's visibility timeout.
            logger.warning(
                "could not set the redelivery backoff", extra={"reason": redeliver.reason}
            )
        logger.info(
            "message handed back for redelivery",
            extra={
                "outcome": "retry",
                "relay_id": queued_relay_id(queued.attribute("RelayId"), queued.message_id),
                "provider": provider,
                "reason": redeliver.reason,
                "delay_s": redeliver.delay,
                "receive_count": queued.receive_count,
            },
        )

    def handle(
        self, queued: QueuedMessage, message: Message | RelayError, deadline: float | None
    ) -> Outcome:
        """Deliver ``message`` (from ``parse``) before ``deadline``; raise Redeliver to retry."""
        relay_id = queued_relay_id(queued.attribute("RelayId"), queued.message_id)
        if isinstance(message, RelayError):
            return self._park(queued, None, "invalid", None, _describe(message), relay_id)
        key = message.idempotency_key or queued.attribute("IdempotencyKey") or relay_id
        record_key: str | dict[str, str] = key
        if queued.attribute(QUEUED_BY) == QUEUED_BY_WEBHOOK:
            # The webhook kept the caller's key when it queued this message, or when it parked
            # it after a synchronous send got no answer ("held": an operator's redrive brings
            # it here); its send is kept under the relay id, as an object so that no caller's
            # key (a string) can be the same, and with this message's payload (its defaults
            # may have changed since).
            record_key = {"relay_id": relay_id}
            if self._delivered_since_held(queued, message, relay_id):
                return "duplicate"
        request = request_for(record_key, message)
        if queued.receive_count > self._settings.max_receive_count:
            return self._past_the_last_receive(queued, message, request, relay_id, key)
        # A redelivery may follow a receive cut off mid-send: only redeliveries (rare) read
        # the record first, the first receive goes straight to the send.
        unfinished = queued.receive_count > 1 and self._unfinished_before(
            request, key, relay_id, message.provider
        )
        if deadline is None:
            return self._retry_or_park(queued, message, OutOfTime(), relay_id, key, unfinished)
        try:
            result = self._deliver_once(
                request=request, message=message, relay_id=relay_id, deadline=deadline
            )
        except InvalidMessage as error:  # the key was used before for another message
            detail = _describe(error)
            return self._park(
                queued, message, "invalid", None, detail, relay_id, key, unfinished=unfinished
            )
        except ProviderRejected as error:
            detail = f"{error.message}: {_short(error.provider_error)}"
            status = error.provider_status
            return self._park(
                queued, message, "permanent", status, detail, relay_id, key, unfinished=unfinished
            )
        except RelayError as error:
            if isinstance(error, ProviderTimeout) and not self._last_receive(queued):
                logger.warning("ambiguous send will be retried", extra={"relay_id": relay_id})
                # The failure deleted the idempotency record: without this, a later receive that
                # parks the message would not know the provider may already have it. (On the
                # last receive the parking below flags it from the error itself.)
                self._idempotency.mark_ambiguous(key, relay_id)
            return self._retry_or_park(queued, message, error, relay_id, key, unfinished)
        except Exception as error:  # not the relay's own (a Powertools or botocore surprise)
            # The type only: an exception's text can carry message data.
            logger.error(
                "unexpected error; the message will be retried",
                extra={"error": type(error).__name__},
            )
            unexpected = RelayError(f"unexpected {type(error).__name__}")
            return self._retry_or_park(queued, message, unexpected, relay_id, key, unfinished)
        return "duplicate" if result.get(REPLAYED) else "delivered"

    def _delivered_since_held(self, queued: QueuedMessage, message: Message, relay_id: str) -> bool:
        """Whether a held message an operator redrove was delivered under its caller's key since.

        A held letter whose parking seemed to fail (SendMessage timed out, yet SQS had it)
        freed the key, and the caller's retry may then have been delivered: that key's record
        is then a delivery, not the ``held`` answer. Read only for redriven held letters (the
        webhook's, flagged PossiblyDelivered, with the caller's key): one GetItem, rare.
        """
        key = queued.attribute("IdempotencyKey")
        if key is None or not queued.flagged_possibly_delivered:
            return False
        return self._idempotency.kept_delivery(request_for(key, message), relay_id)

    def _unfinished_before(
        self, request: dict[str, Any], key: str, relay_id: str, provider: str
    ) -> bool:
        """Whether an earlier receive's send may have gone out with no outcome recorded.

        A send cut off by a crash or the Lambda's timeout leaves its record INPROGRESS and no
        marker; Powertools takes such a record over once it expires, and its failure then
        deletes it. The marker keeps the fact for a later parking, on this receive or another.
        Counted as an ambiguous send: the resend that follows may be a duplicate, and only
        this receive learns of it.
        """
        earlier = self._idempotency.earlier_send(request, relay_id)
        if earlier == "unreadable":  # flag this receive; a marker would outlast a blip
            return True
        if earlier != "unfinished":
            return False
        logger.warning("an earlier send may have gone out unanswered", extra={"relay_id": relay_id})
        outcomes.count("AmbiguousSends", provider)
        self._idempotency.mark_ambiguous(key, relay_id)
        return True

    def _past_the_last_receive(
        self,
        queued: QueuedMessage,
        message: Message,
        request: dict[str, Any],
        relay_id: str,
        key: str,
    ) -> Outcome:
        """A receive the relay did not plan for: the queue's redrive policy allows one more than
        MAX_RECEIVE_COUNT, so an invocation that ended without an outcome on the last receive (a
        crash, a timeout, a failed dead-letter send) still gets the message parked with a
        reason, not moved by SQS without one. Nothing is sent: its receives are used up."""
        earlier = self._idempotency.earlier_send(request, relay_id)
        if earlier == "delivered":
            return "duplicate"
        detail = (
            f"gave up after {queued.receive_count} receives: an earlier invocation ended "
            "without an outcome (timeout or crash)"
        )
        unfinished = earlier in ("unfinished", "unreadable")
        return self._park(
            queued, message, "exhausted", None, detail, relay_id, key, unfinished=unfinished
        )

    def _retry_or_park(
        self,
        queued: QueuedMessage,
        message: Message,
        error: RelayError,
        relay_id: str,
        key: str,
        unfinished: bool,
    ) -> Outcome:
        if self._last_receive(queued):
            detail = f"gave up after {queued.receive_count} receives: {error.message}"
            status = getattr(error, "provider_status", None)
            return self._park(
                queued, message, "exhausted", status, detail, relay_id, key, error, unfinished
            )
        retry_after = error.retry_after if isinstance(error, ProviderUnavailable) else None
        raise Redeliver(error.reason, self.backoff(queued.receive_count, retry_after or 0))

    def _last_receive(self, queued: QueuedMessage) -> bool:
        """The last receive the relay plans for: it parks the message rather than hand it back.

        The queue's redrive policy allows one more, for when this one ends without an outcome.
        """
        return queued.receive_count >= self._settings.max_receive_count

    def backoff(self, receive_count: int, retry_after: int = 0) -> int:
        s = self._settings
        return redelivery_delay(receive_count, retry_after, s.redelivery_base, s.redelivery_max)

    def _park(
        self,
        queued: QueuedMessage,
        message: Message | None,
        kind: ParkedKind,
        status: int | None,
        detail: str,
        relay_id: str,
        key: str | None = None,
        error: RelayError | None = None,
        unfinished: bool = False,
    ) -> Outcome:
        """Dead-letter the message with its reason; ``unfinished``: an earlier send of it may
        have gone out (``_unfinished_before``)."""
        possibly_delivered = unfinished or self._possibly_delivered(
            queued, message, key, relay_id, error
        )
        reason = park_reason(kind, status, detail, relay_id, key, possibly_delivered)
        try:
            self._queues.dead_letter(queued.body, reason, queued.attributes)
        except Exception as failure:
            # Never delete a message without a home: hand it back, it will come round again.
            logger.error(
                "could not dead-letter; handing the message back",
                extra={"error": type(failure).__name__},
            )
            if isinstance(error, ProviderTimeout) and key is not None:
                # An unanswered send on the last receive wrote no marker and its failure deleted
                # the record: the receive that parks the message next would not know of it.
                self._idempotency.mark_ambiguous(key, relay_id)
            raise Redeliver("dead_letter_failed", self.backoff(1)) from None
        provider = message.provider if message is not None else None
        outcomes.count("MessagesFailed", provider, ("Reason", PARKED_REASON[kind]))
        logger.warning(
            "message dead-lettered",
            extra={
                "relay_id": relay_id,
                "provider": provider,
                "outcome": "dead_lettered",
                "error_kind": kind,
                "provider_status": status,
                "receive_count": queued.receive_count,
                "possibly_delivered": possibly_delivered,
            },
        )
        return "dead_lettered"

    def _possibly_delivered(
        self,
        queued: QueuedMessage,
        message: Message | None,
        key: str | None,
        relay_id: str,
        error: RelayError | None,
    ) -> bool:
        """Whether the provider may have the message being parked: its send now, or one on an
        earlier receive (the marker), went unanswered; or it was parked so before (redriven)."""
        if isinstance(error, ProviderTimeout) or queued.flagged_possibly_delivered:
            return True
        if message is None or key is None:  # a body that is no message was never sent
            return False
        # A key refused as used for another message may still follow an unanswered send.
        return self._idempotency.possibly_delivered(key, relay_id)


def redelivery_delay(receive_count: int, retry_after: int, base: float, cap: float) -> int:
    """Seconds until the next receive: exponential by receive count with equal jitter, at least
    the provider's Retry-After, at most SQS's 12 hours."""
    ceiling = min(cap, base * 2 ** max(0, receive_count - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter
    wait: float = min(MAX_VISIBILITY, max(delay, retry_after))
    return math.ceil(wait)


def _describe(error: RelayError) -> str:
    errors = getattr(error, "errors", None)
    if isinstance(errors, dict):
        return "; ".join(f"{field}: {', '.join(problems)}" for field, problems in errors.items())
    return error.message


def _short(value: Any, limit: int = 512) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"
