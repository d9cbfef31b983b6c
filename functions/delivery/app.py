"""SQS delivery queue → providers. Reports partial batch failures: exactly the records to retry."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)

from relay.batch import BatchRun
from relay.config import PROVIDERS
from relay.observability import logger, metrics, outcomes, tracer
from relay.queue_worker import QueuedMessage
from relay.runtime import Relay

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef

    from relay.queue_worker import Outcome

relay = Relay.from_env()
worker = relay.worker()
# Sends block on the network: threads carry them, at most the per-provider limit each.
executor = ThreadPoolExecutor(max_workers=relay.settings.provider_concurrency * len(PROVIDERS))
# A batch where every record failed is still answered with its list, not an exception.
processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    relay.idempotency.start_invocation(context)
    run = BatchRun(worker, relay.settings, executor, context.get_remaining_time_in_millis)

    async def record_handler(record: SQSRecord) -> Outcome:
        return await run(_queued(record))

    try:
        return async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    finally:
        outcomes.flush()


def _queued(record: SQSRecord) -> QueuedMessage:
    attributes: dict[str, MessageAttributeValueTypeDef] = {}
    for name, value in (record.raw_event.get("messageAttributes") or {}).items():
        attribute: MessageAttributeValueTypeDef = {"DataType": value.get("dataType", "String")}
        if value.get("stringValue") is not None:
            attribute["StringValue"] = value["stringValue"]
        if value.get("binaryValue") is not None:  # base64 in the event, bytes for boto3
            attribute["BinaryValue"] = base64.b64decode(value["binaryValue"])
        attributes[name] = attribute
    return QueuedMessage(
        message_id=record.message_id,
        receipt_handle=record.receipt_handle,
        body=record.body or "",
        attributes=attributes,
        receive_count=int(record.attributes.approximate_receive_count or 1),
    )
