"""The delivery queue and its dead-letter queue (SQS)."""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Literal

from botocore.exceptions import BotoCoreError, ClientError

from relay.errors import DependencyUnavailable
from relay.secrets import pooled

if TYPE_CHECKING:
    from collections.abc import Mapping

    import boto3
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef

MAX_ATTRIBUTES = 10  # SQS's limit per message
MAX_ERROR_MESSAGE = 1024
# "true" on a dead letter whose message may have reached the provider (an ambiguous send):
# part of the reason, which is decided on each parking (the worker honours one a redriven
# message came with), so a message's own is never copied over as is.
POSSIBLY_DELIVERED = "PossiblyDelivered"
# A dead letter's ErrorKind. The webhook parks a synchronous send that got no answer as
# "exhausted" too: a retryable failure it gave up on (it never resends an unanswered send).
ParkedKind = Literal["invalid", "permanent", "exhausted"]


def park_reason(
    kind: ParkedKind,
    status: int | None,
    detail: str,
    relay_id: str,
    key: str | None,
    possibly_delivered: bool,
) -> dict[str, str | int | None]:
    """The reason a message is parked with (``Queues.dead_letter``), the same from both
    functions: ErrorKind, ErrorStatus, ErrorMessage, and what a redrive is recognised by."""
    return {
        "ErrorKind": kind,
        "ErrorStatus": status,
        "ErrorMessage": detail,
        "RelayId": relay_id,
        "IdempotencyKey": key,
        POSSIBLY_DELIVERED: "true" if possibly_delivered else None,
    }


class Queues:
    """Sends to the delivery queue and the dead-letter queue; changes a message's visibility."""

    def __init__(
        self,
        session: boto3.session.Session,
        delivery_url: str | None,
        dead_letter_url: str | None,
        threads: int = 1,
    ) -> None:
        self._threads = threads
        self.delivery_url = delivery_url
        self.dead_letter_url = dead_letter_url
        # Created on first use: most invocations never touch SQS (a sync webhook request, a
        # batch that all delivers), and a client costs its service model at init.
        self._session = session
        self._client: SQSClient | None = None
        self._lock = threading.Lock()

    @property
    def _sqs(self) -> SQSClient:
        if self._client is None:
            with self._lock:  # boto3 sessions are not thread-safe: one creation at a time
                if self._client is None:
                    self._client = self._session.client("sqs", config=pooled(self._threads))
        return self._client

    def enqueue(self, body: str, attributes: Mapping[str, str]) -> str:
        """Put a message on the delivery queue; its SQS message id."""
        assert self.delivery_url is not None
        try:
            sent = self._sqs.send_message(
                QueueUrl=self.delivery_url,
                MessageBody=sqs_safe(body),
                MessageAttributes={k: string_attribute(v) for k, v in attributes.items()},
            )
        except (BotoCoreError, ClientError):
            raise DependencyUnavailable("the delivery queue is unavailable; retry later") from None
        return sent["MessageId"]

    def dead_letter(
        self,
        body: str,
        reason: Mapping[str, str | int | None],
        original: Mapping[str, MessageAttributeValueTypeDef],
    ) -> str:
        """Park a message with its reason (``park_reason``): the body unchanged, the reason as
        attributes; the dead letter's SQS message id.

        The original attributes (RelayId, IdempotencyKey, QueuedBy, a producer's own) come
        along so that a redrive is recognised by idempotency; the reason's attributes
        (PossiblyDelivered among them) take precedence when SQS's ten-attribute limit forces a
        choice. Raises if the send fails.

        botocore retries a send whose answer was late (FAST_FAIL): SQS may have stored the first
        too, which leaves two identical letters. That is the least harm a late answer can do: a
        send that failed instead would be handed back (or a held send answered a plain 504) and
        the message sent or parked again, where a copy is recognised by its RelayId, and a
        redrive of both delivers it once.
        """
        assert self.dead_letter_url is not None
        attributes: dict[str, MessageAttributeValueTypeDef] = {}
        for name, given in reason.items():
            if isinstance(given, int):
                attributes[name] = {"DataType": "Number", "StringValue": str(given)}
            elif given:
                attributes[name] = string_attribute(given[:MAX_ERROR_MESSAGE])
        for name, kept in original.items():
            # A redriven message's old reason is not this one's; a key the reason leaves
            # empty (an unparseable body has no key of its own) keeps the message's own.
            if name.startswith("Error") or name == POSSIBLY_DELIVERED or name in attributes:
                continue
            if len(attributes) < MAX_ATTRIBUTES:
                attributes[name] = kept
        sent = self._sqs.send_message(
            QueueUrl=self.dead_letter_url, MessageBody=body, MessageAttributes=attributes
        )
        return sent["MessageId"]

    def delay(self, receipt_handle: str, seconds: int) -> None:
        """Make a received message visible again after ``seconds`` (the redelivery backoff)."""
        assert self.delivery_url is not None
        self._sqs.change_message_visibility(
            QueueUrl=self.delivery_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
        )


# Characters SQS refuses in a body or an attribute value (its allowed set, inverted).
_SQS_REFUSES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def sqs_safe(text: str) -> str:
    """``text`` with the characters SQS refuses written as ``\\uXXXX`` escapes.

    In a JSON body this is the same JSON (such characters can only stand inside strings);
    in an attribute (a key, a reason naming a caller's field) it keeps the send from failing.
    """
    return _SQS_REFUSES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def string_attribute(value: str) -> MessageAttributeValueTypeDef:
    """A String message attribute holding ``value`` (``sqs_safe``)."""
    return {"DataType": "String", "StringValue": sqs_safe(value)}
