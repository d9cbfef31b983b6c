"""Send once: Powertools idempotency on DynamoDB, one key space for the HTTP and SQS entries.

A record is kept only for work that has an outcome (a delivery, an enqueue, a parking); any
failure deletes it, so a caller or a redrive can try again. Keys are the caller's
(``idempotency_key``, the ``Idempotency-Key`` header, ``webhook-id``) or the relay's
(``RelayId``, the SQS message id). An HTTP request keeps one record, whichever way it went: a
delivery; ``{"status": "queued"}`` for a message the webhook queued; or ``{"status": "held"}``
for a synchronous send that got no answer, which the webhook parked in the dead-letter queue
rather than let a retry send it again. The delivery function sends a queued message, or a held
one an operator redrives, under the key ``{"relay_id": ...}`` (it carries ``QueuedBy``).

Besides the records, the SQS path keeps a marker per idempotency key whose send ended without
an answer (``mark_ambiguous``): the failure deleted the record, and the marker is what tells a
later dead-lettering of the message (or of another copy with the same key) that the provider
may already have it. A send cut off by a crash or the Lambda's timeout deletes nothing: its
record stays INPROGRESS, and a later receive reads it (``earlier_send``) to learn the same.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS

from relay.errors import DependencyUnavailable, InvalidMessage, ProviderTimeout, RelayError
from relay.group_write import GroupWriter
from relay.observability import logger
from relay.secrets import pooled

if TYPE_CHECKING:
    from collections.abc import Callable

    import boto3
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from relay.message import Message

F = TypeVar("F", bound="Callable[..., dict[str, Any]]")
# What a later receive finds of an earlier send of its message (``Idempotency.earlier_send``).
EarlierSend = Literal["delivered", "unfinished", "unreadable", "none"]

# An explicit prefix: Powertools' default embeds the module and function name, which differ
# between the two handlers; deliveries must share one key space across both entry points.
DELIVER = "webhook-relay#deliver"
REPLAYED = "replayed"
QUEUED = "queued"  # the status of a record the webhook kept for a message it queued
# The status of a record the webhook kept for a message it parked after a synchronous send got
# no answer: a repeat gets the same 504, and nothing is sent again.
HELD = "held"
# The attribute the webhook sets on what it queues or parks (``QUEUED_BY_WEBHOOK``); kept through
# dead-lettering and redrives.
QUEUED_BY = "QueuedBy"
QUEUED_BY_WEBHOOK = "webhook"
# Markers of ambiguous sends, ``webhook-relay#ambiguous#<relay id>``: a prefix no Powertools key
# (``webhook-relay#deliver#<hash>``) can have, in the same table and under its TTL attribute.
AMBIGUOUS = "webhook-relay#ambiguous"
EXPIRY_ATTRIBUTE = "expiration"  # Powertools' default, the table's TimeToLiveSpecification
# A marker must last until its message is parked, which carries the flag on: at least as long
# as the delivery queue keeps a message (template.yaml's MessageRetentionPeriod, 4 days).
MARKER_MIN_TTL_SECONDS = 4 * 24 * 3600


class InProgress(RelayError):
    """The same key is being worked on right now, elsewhere."""

    status, kind, reason = 409, "transient", "in_progress"

    def headers(self) -> dict[str, str]:
        # Most sends take well under a second; a key left in progress by an invocation that
        # ended without an outcome is free again by the function's timeout, so keep trying.
        return {"Retry-After": "1"}


class Idempotency:
    """The idempotency table and settings; ``once`` makes a function run once per key."""

    def __init__(
        self, session: boto3.session.Session, table: str, ttl_seconds: int, threads: int = 1
    ) -> None:
        client = session.client("dynamodb", config=pooled(threads))
        self._client, self._table, self._ttl = client, table, ttl_seconds
        self.config = IdempotencyConfig(
            event_key_jmespath="key",
            payload_validation_jmespath="message",
            expires_after_seconds=ttl_seconds,
            response_hook=_mark_replayed,
        )
        # Powertools keeps the key prefix on the persistence layer itself.
        self._store = _GroupedCompletions(table_name=table, boto3_client=client)
        self._store.configure(self.config, key_prefix=DELIVER)

    def start_invocation(self, context: LambdaContext) -> None:
        """Call on every invocation: in-progress records then expire with the Lambda's time."""
        self.config.register_lambda_context(context)

    def once(self, function: F) -> F:
        """``function(request=..., **kwargs)`` runs once per ``request["key"]``.

        ``request`` is ``{"key": str, "message": dict}``; the same key with another message is
        refused. A repeat returns the first result with ``"replayed": True`` added.
        """
        finished = threading.local()

        def remember(**kwargs: Any) -> dict[str, Any]:
            try:
                finished.result = function(**kwargs)
            except ProviderTimeout as error:
                finished.ambiguous = error
                raise
            return finished.result  # type: ignore[no-any-return]

        wrapped = idempotent_function(
            functools.wraps(function)(remember),
            data_keyword_argument="request",
            persistence_store=self._store,
            config=self.config,
            key_prefix=DELIVER,
        )

        def guarded(**kwargs: Any) -> dict[str, Any]:
            finished.result = finished.ambiguous = None
            try:
                result: dict[str, Any] = wrapped(**kwargs)
            except IdempotencyPersistenceLayerError:
                if finished.result is not None:
                    # The work is done (a message was sent): the record of it is what failed.
                    # Report the work, or a retry would send the message a second time.
                    logger.warning("done, but the idempotency record could not be saved")
                    return dict(finished.result)
                if finished.ambiguous is not None:
                    # The send went out unanswered, then deleting its record failed: the
                    # provider may have the message, which "store unavailable" would hide.
                    raise finished.ambiguous from None
                raise DependencyUnavailable("the idempotency store is unavailable") from None
            except (IdempotencyValidationError, IdempotencyAlreadyInProgressError) as error:
                raise _refusal(error) from None
            return result

        return guarded  # type: ignore[return-value]

    def mark_ambiguous(self, key: str, relay_id: str) -> None:
        """Remember that a send of the message with this idempotency ``key`` may have gone out:
        for the idempotency window, and at least while the delivery queue may hold it.

        Keyed like the delivery, not by relay id: another copy of the message (a producer's
        retry, the same key) that is parked later is then flagged too. Best effort: on failure
        the message goes on as it would have (logged, no message data).
        """
        ttl = max(self._ttl, MARKER_MIN_TTL_SECONDS)
        item = {
            "id": {"S": _marker_key(key)},
            # Not a Powertools record, but shaped like one for whoever scans the table.
            "status": {"S": "AMBIGUOUS"},
            EXPIRY_ATTRIBUTE: {"N": str(int(time.time()) + ttl)},
        }
        try:
            self._client.put_item(TableName=self._table, Item=item)
        except Exception as error:  # best effort: nothing here may change the message's outcome
            logger.warning(
                "could not record the ambiguous send",
                extra={"relay_id": relay_id, "error": type(error).__name__},
            )

    def possibly_delivered(self, key: str, relay_id: str) -> bool:
        """Whether a send of the message with this ``key`` ended without an answer
        (``mark_ambiguous``); ``relay_id`` is for the log.

        True also when the marker cannot be read: a redrive must not take an unknown for "never
        sent". One consistent GetItem: the marker may be seconds old, from another invocation.
        """
        try:
            found = self._client.get_item(
                TableName=self._table,
                Key={"id": {"S": _marker_key(key)}},
                ConsistentRead=True,
                ProjectionExpression="#id",
                ExpressionAttributeNames={"#id": "id"},
            )
        except Exception as error:
            logger.warning(
                "could not read the ambiguous-send marker; taking it as possibly delivered",
                extra={"relay_id": relay_id, "error": type(error).__name__},
            )
            return True
        # One past its expiry that DynamoDB has not removed yet counts too: the send it records
        # may still have gone out.
        return "Item" in found

    def earlier_send(self, request: dict[str, Any], relay_id: str) -> EarlierSend:
        """What the record kept for ``request`` (``request_for``) says of an earlier send of it.

        "delivered": COMPLETED. "unfinished": INPROGRESS, so its invocation ended mid-send (a
        crash, the Lambda's timeout) or is still sending; also a record past its TTL.
        "unreadable": no answer, or one Powertools cannot read: to be taken as possibly
        delivered (the safe side, as for the marker), but it proves nothing to remember. "none":
        no record, or one of another message under the same key. One consistent GetItem, as
        Powertools makes it (its key layout); ``relay_id`` is for the log.
        """
        try:
            record = self._kept(request)
        except Exception as error:
            logger.warning(
                "could not read the idempotency record; taking it as possibly delivered",
                extra={"relay_id": relay_id, "error": type(error).__name__},
            )
            return "unreadable"
        if record is None or record.status is None:
            return "none"
        return "delivered" if record.status == STATUS_CONSTANTS["COMPLETED"] else "unfinished"

    def kept_delivery(self, request: dict[str, Any], relay_id: str) -> bool:
        """Whether the record kept for ``request`` (``request_for``) is a delivery: COMPLETED,
        and neither a queued nor a held message (``relay_id`` is for the log).

        False when there is none, when it is another message's, and when it cannot be read.
        """
        try:
            record = self._kept(request)
        except Exception as error:
            logger.warning(
                "could not read the idempotency record of a redriven message",
                extra={"relay_id": relay_id, "error": type(error).__name__},
            )
            return False
        if record is None or record.status != STATUS_CONSTANTS["COMPLETED"]:
            return False
        kept = record.response_json_as_dict() or {}
        return kept.get("status") not in (QUEUED, HELD)

    def _kept(self, request: dict[str, Any]) -> DataRecord | None:
        """The record kept for ``request``: None if there is none, or it is another message's
        (the same key, another payload); raises if it cannot be read. One consistent GetItem."""
        try:
            return self._store.get_record(request)
        except (IdempotencyItemNotFoundError, IdempotencyValidationError):
            return None


class _GroupedCompletions(DynamoDBPersistenceLayer):
    """Powertools' DynamoDB store, with COMPLETED records written in groups (relay.group_write).

    Powertools' UpdateItem sets the answer, expiry, status and payload hash; the put writes the
    same attributes and the key, dropping only ``in_progress_expiration``, which Powertools reads
    of INPROGRESS records alone. Neither is conditional. Claims and deletions stay one call each:
    a claim's condition needs PutItem, and a deletion is a failure's, rare.
    """

    def __init__(self, table_name: str, boto3_client: DynamoDBClient) -> None:
        super().__init__(table_name=table_name, boto3_client=boto3_client)
        # The key's attribute names (with a sort key, both): what two puts of one record share.
        key = list(self._get_key("any"))
        self._completions = GroupWriter(boto3_client.batch_write_item, table_name, key)

    def _update_record(self, data_record: DataRecord) -> None:
        item = {
            **self._get_key(data_record.idempotency_key),
            self.expiry_attr: {"N": str(data_record.expiry_timestamp)},
            self.data_attr: {"S": data_record.response_data},
            self.status_attr: {"S": data_record.status},
        }
        if self.payload_validation_enabled:
            item[self.validation_key_attr] = {"S": data_record.payload_hash}
        self._completions.put(item)


def _marker_key(key: str) -> str:
    return f"{AMBIGUOUS}#{key}"


def _refusal(error: Exception) -> RelayError:
    if isinstance(error, IdempotencyValidationError):
        return InvalidMessage({"idempotency_key": ["was used before with a different message"]})
    return InProgress("a message with this idempotency key is being sent")


def request_for(key: str | dict[str, str], message: Message) -> dict[str, Any]:
    """The idempotent payload: the key, and the message as sent (defaults applied)."""
    return {
        "key": key,
        "message": {
            "provider": message.provider,
            "to": message.to,
            "text": message.text,
            "from": message.sender,
            "workspace": message.workspace,
        },
    }


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    return {**response, REPLAYED: True} if isinstance(response, dict) else response
