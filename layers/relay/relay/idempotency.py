"""Send once: Powertools idempotency on DynamoDB, one key space for the HTTP and SQS entries.

A record is kept only for work that succeeded (a delivery, an enqueue); any failure deletes it,
so a caller or a redrive can try again. Keys are the caller's (``idempotency_key``, the
``Idempotency-Key`` header, ``webhook-id``) or the relay's (``RelayId``, the SQS message id).
"""

from __future__ import annotations

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
from relay.secrets import FAST_FAIL

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import boto3
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from relay.message import Message

F = TypeVar("F", bound="Callable[..., dict[str, Any]]")

# Explicit prefixes: Powertools' default embeds the module and function name, which differ
# between the two handlers; deliveries must share one key space across both entry points.
DELIVER = "webhook-relay#deliver"
ENQUEUE = "webhook-relay#enqueue"
REPLAYED = "replayed"


class InProgress(RelayError):
    """The same key is being worked on right now, elsewhere."""

    status, kind, reason = 409, "transient", "in_progress"


class Idempotency:
    """The idempotency store and its settings; ``once`` makes a function run once per key."""

    def __init__(self, session: boto3.session.Session, table: str, ttl_seconds: int) -> None:
        self.store = DynamoDBPersistenceLayer(
            table_name=table, boto3_client=session.client("dynamodb", config=FAST_FAIL)
        )
        self.config = IdempotencyConfig(
            event_key_jmespath="key",
            payload_validation_jmespath="message",
            expires_after_seconds=ttl_seconds,
            response_hook=_mark_replayed,
        )

    def start_invocation(self, context: LambdaContext) -> None:
        """Call on every invocation: in-progress records then expire with the Lambda's time."""
        self.config.register_lambda_context(context)

    def once(self, function: F, prefix: str) -> F:
        """``function(request=..., **kwargs)`` runs once per ``request["key"]``.

        ``request`` is ``{"key": str, "message": dict}``; the same key with another message is
        refused. A repeat returns the first result with ``"replayed": True`` added.
        """
        wrapped = idempotent_function(
            function,
            data_keyword_argument="request",
            persistence_store=self.store,
            config=self.config,
            key_prefix=prefix,
        )

        def guarded(**kwargs: Any) -> dict[str, Any]:
            try:
                result: dict[str, Any] = wrapped(**kwargs)
            except IdempotencyValidationError:
                raise InvalidMessage(
                    {"idempotency_key": ["was used before with a different message"]}
                ) from None
            except IdempotencyAlreadyInProgressError:
                raise InProgress("a message with this idempotency key is being sent") from None
            except IdempotencyPersistenceLayerError:
                raise DependencyUnavailable("the idempotency store is unavailable") from None
            return result

        return guarded  # type: ignore[return-value]


def request_for(key: str, message: Message) -> dict[str, Any]:
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


def caller_key(message: Message, headers: Mapping[str, str]) -> str | None:
    """The HTTP caller's key: the body's, else ``Idempotency-Key``, else ``webhook-id``."""
    return (
        message.idempotency_key
        or headers.get("idempotency-key", "").strip()[:255]
        or headers.get("webhook-id", "").strip()[:255]
        or None
    )


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    return {**response, REPLAYED: True} if isinstance(response, dict) else response
