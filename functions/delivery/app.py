"""SQS delivery queue → providers. Reports partial batch failures: exactly the records to retry."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from relay import init_done
from relay.batch import BatchRun, send_lanes
from relay.observability import logger, metrics, outcomes, tracer
from relay.queue_worker import QueuedMessage
from relay.runtime import Relay

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef

relay = Relay.from_env()
worker = relay.worker()
lanes = send_lanes(relay.settings)  # threads are started on first use, kept across invocations


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    relay.idempotency.start_invocation(context)
    run = BatchRun(worker, relay.settings, lanes, context.get_remaining_time_in_millis)
    try:
        return run.partial_response(event.get("Records") or [], _queued)
    finally:
        outcomes.flush()


def _queued(record: Mapping[str, Any]) -> QueuedMessage:
    attributes: dict[str, MessageAttributeValueTypeDef] = {}
    for name, value in (record.get("messageAttributes") or {}).items():
        attribute: MessageAttributeValueTypeDef = {"DataType": value.get("dataType", "String")}
        if value.get("stringValue") is not None:
            attribute["StringValue"] = value["stringValue"]
        if value.get("binaryValue") is not None:  # base64 in the event, bytes for boto3
            attribute["BinaryValue"] = base64.b64decode(value["binaryValue"])
        attributes[name] = attribute
    return QueuedMessage(
        message_id=record["messageId"],
        receipt_handle=record["receiptHandle"],
        body=record.get("body") or "",
        attributes=attributes,
        receive_count=int((record.get("attributes") or {}).get("ApproximateReceiveCount") or 1),
    )


init_done()  # last: the init is over (relay/__init__.py)
