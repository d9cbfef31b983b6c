"""Send once: Powertools idempotency on DynamoDB, one key space for the HTTP and SQS entries.

A record is kept only for work that succeeded (a delivery, an enqueue); any failure deletes it,
so a caller or a redrive can try again. Keys are the caller's (``idempotency_key``, the
``Idempotency-Key`` header, ``webhook-id``) or the relay's (``RelayId``, the SQS message id).
An HTTP request keeps one record, whichever way it went: a delivery, or ``{"status": "queued"}``
for a message the webhook queued, which the delivery function then sends under the key
``{"relay_id": ...}``.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from relay.errors import DependencyUnavailable, InvalidMessage, RelayError
from relay.observability import logger
from relay.secrets import pooled

if TYPE_CHECKING:
    from collections.abc import Callable

    import boto3
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from relay.message import Message

F = TypeVar("F", bound="Callable[..., dict[str, Any]]")

# An explicit prefix: Powertools' default embeds the module and function name, which differ
# between the two handlers; deliveries must share one key space across both entry points.
DELIVER = "webhook-relay#deliver"
REPLAYED = "replayed"
QUEUED = "queued"  # the status of a record the webhook kept for a message it queued
# The attribute the webhook sets on what it queues; kept through dead-lettering and redrives.
QUEUED_BY = "QueuedBy"


class InProgress(RelayError):
    """The same key is being worked on right now, elsewhere."""

    status, kind, reason = 409, "transient", "in_progress"


class Idempotency:
    """The idempotency table and settings; ``once`` makes a function run once per key."""

    def __init__(
        self, session: boto3.session.Session, table: str, ttl_seconds: int, threads: int = 1
    ) -> None:
        client = session.client("dynamodb", config=pooled(threads))
        self.config = IdempotencyConfig(
            event_key_jmespath="key",
            payload_validation_jmespath="message",
            expires_after_seconds=ttl_seconds,
            response_hook=_mark_replayed,
        )
        # Powertools keeps the key prefix on the persistence layer itself.
        self._store = DynamoDBPersistenceLayer(table_name=table, boto3_client=client)
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
            finished.result = function(**kwargs)
            return finished.result  # type: ignore[no-any-return]

        wrapped = idempotent_function(
            functools.wraps(function)(remember),
            data_keyword_argument="request",
            persistence_store=self._store,
            config=self.config,
            key_prefix=DELIVER,
        )

        def guarded(**kwargs: Any) -> dict[str, Any]:
            finished.result = None
            try:
                result: dict[str, Any] = wrapped(**kwargs)
            except IdempotencyPersistenceLayerError:
                if finished.result is not None:
                    # The work is done (a message was sent): the record of it is what failed.
                    # Report the work, or a retry would send the message a second time.
                    logger.warning("done, but the idempotency record could not be saved")
                    return dict(finished.result)
                raise DependencyUnavailable("the idempotency store is unavailable") from None
            except (IdempotencyValidationError, IdempotencyAlreadyInProgressError) as error:
                raise _refusal(error) from None
            return result

        return guarded  # type: ignore[return-value]


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
