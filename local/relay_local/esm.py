"""A local SQS event source mapping: poll a queue, invoke a handler with real-shaped batches.

Like Lambda's: batches of up to ``batch_size``, ``ReportBatchItemFailures`` (records listed as
failures stay on the queue and come back after their visibility timeout, which the handler may
have changed), a handler error returns the whole batch, and the queue's own redrive policy moves
a message to the dead-letter queue once its receives run out.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay_local.lambda_runtime import LambdaContext

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

    Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class BatchResult:
    received: int
    failed: list[str]  # message ids handed back
    error: str | None = None  # the handler raised: every record goes back


@dataclass
class EventSourceMapping:
    sqs: SQSClient
    queue_url: str
    handler: Handler
    batch_size: int = 10
    wait_seconds: int = 1
    timeout_s: float = 60.0
    results: list[BatchResult] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _arn: str = ""

    def poll_once(self, wait_seconds: int | None = None) -> BatchResult | None:
        """Receive one batch and invoke the handler with it; None when the queue was empty."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=min(10, self.batch_size),
            WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return None
        event = {"Records": [self._record(m) for m in messages]}
        try:
            answer = self.handler(event, LambdaContext(timeout_s=self.timeout_s))
        except Exception as error:  # the whole batch goes back, as with Lambda
            result = BatchResult(len(messages), [m["MessageId"] for m in messages], repr(error))
            self.results.append(result)
            return result
        failed = [f["itemIdentifier"] for f in (answer or {}).get("batchItemFailures", [])]
        done = [m for m in messages if m["MessageId"] not in failed]
        for chunk in range(0, len(done), 10):
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(done[chunk : chunk + 10])
                ],
            )
        result = BatchResult(len(messages), failed)
        self.results.append(result)
        return result

    def drain(self, idle_seconds: float = 0.0, limit_s: float = 60.0) -> None:
        """Poll until the queue stays empty for ``idle_seconds`` (or ``limit_s`` passes)."""
        deadline = time.monotonic() + limit_s
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.poll_once(wait_seconds=0) is not None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_seconds:
                return
            else:
                time.sleep(0.05)

    def start(self) -> EventSourceMapping:
        """Poll in a background thread until ``stop``."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                except Exception:  # keep polling, as the real mapping does
                    time.sleep(1)

        self._thread = threading.Thread(target=loop, daemon=True, name="esm")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.wait_seconds + 5)

    def _record(self, message: MessageTypeDef) -> dict[str, Any]:
        if not self._arn:
            self._arn = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
        return event_record(message, self._arn)


def event_record(message: MessageTypeDef, queue_arn: str) -> dict[str, Any]:
    """A received SQS message as a Lambda SQS event record."""
    attributes: dict[str, Any] = {}
    for name, value in message.get("MessageAttributes", {}).items():
        attribute: dict[str, Any] = {
            "dataType": value["DataType"],
            "stringListValues": [],
            "binaryListValues": [],
        }
        if "StringValue" in value:
            attribute["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            attribute["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        attributes[name] = attribute
    body = message.get("Body", "")
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": attributes,
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3],
    }
