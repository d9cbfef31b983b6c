"""Floor for the SQS delivery function: each record sent once, or parked, or handed back.

The same essential work as functions/delivery/app.py, with boto3 and urllib3 only: records run
on a thread pool of the relay's size (sends block on the network), each takes an idempotency
record, is POSTed, and completes the record; a provider's 4xx or a broken message is parked in
the dead-letter queue with its reason; anything transient is handed back (batchItemFailures).
See ``benchmarks/floor/__init__.py`` for what it leaves out.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

FAST_FAIL = Config(connect_timeout=1.0, read_timeout=2.0, retries={"total_max_attempts": 2})
E164 = re.compile(r"\+[1-9][0-9]{7,14}")
SECRET_MAX_AGE = 300.0
TTL = int(os.environ.get("IDEMPOTENCY_TTL_SECONDS", "86400"))
CONCURRENCY = int(os.environ.get("PROVIDER_CONCURRENCY", "10"))

TABLE = os.environ["IDEMPOTENCY_TABLE"]
TOKENS_SECRET = os.environ["PROVIDER_TOKENS_SECRET"]
QUEUE_URL = os.environ["DELIVERY_QUEUE_URL"]
DLQ_URL = os.environ["DEAD_LETTER_QUEUE_URL"]
MAX_RECEIVES = int(os.environ.get("MAX_RECEIVE_COUNT", "5"))
URLS = {
    "lancepilot": os.environ["LANCEPILOT_API_URL"].rstrip("/"),
    "fluents": os.environ["FLUENTS_API_URL"].rstrip("/"),
}
WORKSPACE = os.environ.get("LANCEPILOT_WORKSPACE_ID") or None
SENDER = os.environ.get("FLUENTS_FROM_NUMBER") or None

session = boto3.session.Session()
secrets = session.client("secretsmanager", config=FAST_FAIL)
# A connection for each thread, as the relay sizes its pools (botocore's default is 10).
dynamodb = session.client(
    "dynamodb", config=FAST_FAIL.merge(Config(max_pool_connections=CONCURRENCY * len(URLS)))
)
_sqs: Any = None  # made on first use, as the relay does: a batch that all delivers needs none
_sqs_lock = threading.Lock()
http = urllib3.PoolManager(maxsize=CONCURRENCY, retries=False, headers={"User-Agent": "floor/0.1"})
TIMEOUT = urllib3.Timeout(connect=3.05, read=8.0)
executor = ThreadPoolExecutor(max_workers=CONCURRENCY * len(URLS))
_cache: dict[str, tuple[float, Any]] = {}


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Read (or refresh) the tokens once per batch, before the records fan out to threads.
    cached = _cache.get(TOKENS_SECRET)
    if cached is None or time.monotonic() - cached[0] > SECRET_MAX_AGE:
        try:
            value = json.loads(secrets.get_secret_value(SecretId=TOKENS_SECRET)["SecretString"])
        except (BotoCoreError, ClientError):
            ids = [r["messageId"] for r in event["Records"]]
            return {"batchItemFailures": [{"itemIdentifier": i} for i in ids]}
        cached = _cache[TOKENS_SECRET] = (time.monotonic(), value)
    tokens = cached[1]
    failed = executor.map(lambda record: handle(record, tokens), event["Records"])
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failed if i is not None]}


def handle(record: dict[str, Any], tokens: dict[str, str]) -> str | None:
    """Deliver one record; its message id when it must come back, else None."""
    attributes = record.get("messageAttributes") or {}
    try:
        data = json.loads(record["body"])
    except ValueError:
        return park(record, "invalid", "not JSON")
    message = validate(data)
    if isinstance(message, str):
        return park(record, "invalid", message)
    key = (
        data.get("idempotency_key")
        or attributes.get("IdempotencyKey", {}).get("stringValue")
        or attributes.get("RelayId", {}).get("stringValue")
        or record["messageId"]
    )
    item_id = {"S": f"floor#deliver#{key}"}
    now = int(time.time())
    try:
        dynamodb.put_item(
            TableName=TABLE,
            Item={
                "id": item_id,
                "expiration": {"N": str(now + TTL)},
                "status": {"S": "INPROGRESS"},
            },
            ConditionExpression="attribute_not_exists(#id) OR #expiry < :now",
            ExpressionAttributeNames={"#id": "id", "#expiry": "expiration"},
            ExpressionAttributeValues={":now": {"N": str(now)}},
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
            return str(record["messageId"])
        item = dynamodb.get_item(TableName=TABLE, Key={"id": item_id}).get("Item", {})
        done = item.get("status", {}).get("S") == "COMPLETED"
        return None if done else str(record["messageId"])  # a duplicate, or in progress
    except BotoCoreError:
        return str(record["messageId"])
    status = post(message, tokens[message["provider"]])
    if status is not None and 200 <= status < 300:
        dynamodb.update_item(
            TableName=TABLE,
            Key={"id": item_id},
            UpdateExpression="SET #status = :done, #data = :data",
            ExpressionAttributeNames={"#status": "status", "#data": "data"},
            ExpressionAttributeValues={
                ":done": {"S": "COMPLETED"},
                ":data": {"S": json.dumps({"provider_status": status})},
            },
        )
        return None
    dynamodb.delete_item(TableName=TABLE, Key={"id": item_id})
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return park(record, "permanent", f"HTTP {status}")
    receives = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
    if receives >= MAX_RECEIVES:
        return park(record, "exhausted", f"gave up after {receives} receives")
    queues().change_message_visibility(
        QueueUrl=QUEUE_URL,
        ReceiptHandle=record["receiptHandle"],
        VisibilityTimeout=min(900, 30 * 2 ** (receives - 1)),
    )
    return str(record["messageId"])


def validate(data: Any) -> dict[str, Any] | str:
    """The message with defaults applied, or what is wrong with it (shape checks only)."""
    if not isinstance(data, dict):
        return "not an object"
    provider, to, text = data.get("provider"), data.get("to"), data.get("text")
    if provider not in URLS:
        return "provider"
    if not isinstance(to, str) or not E164.fullmatch(to):
        return "to"
    if not isinstance(text, str) or not 1 <= len(text) <= 4096:
        return "text"
    message = {"provider": provider, "to": to, "text": text}
    if provider == "lancepilot":
        message["workspace"] = data.get("workspace") or WORKSPACE
    else:
        message["from"] = data.get("from") or SENDER
    return message


def post(message: dict[str, Any], token: str) -> int | None:
    """POST the provider's documented request; its status, or None without an answer."""
    base = URLS[message["provider"]]
    if message["provider"] == "lancepilot":
        number = message["to"][1:]
        url = f"{base}/workspaces/{message['workspace']}/contacts/number/{number}/messages/text"
        payload: dict[str, Any] = {"text": {"body": message["text"]}}
    else:
        url = f"{base}/v1/messages"
        payload = {"to_number": message["to"], "from_number": message["from"]}
        payload["message"] = message["text"]
    try:
        reply = http.request(
            "POST",
            url,
            body=json.dumps(payload, ensure_ascii=False).encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            timeout=TIMEOUT,
        )
    except urllib3.exceptions.HTTPError:
        return None
    return reply.status


def queues() -> Any:
    global _sqs
    with _sqs_lock:  # boto3 sessions are not safe to make clients from in several threads
        if _sqs is None:
            _sqs = session.client("sqs", config=FAST_FAIL)
    return _sqs


def park(record: dict[str, Any], kind: str, detail: str) -> str | None:
    """Dead-letter a record with its reason; hand it back (its id) if that fails."""
    try:
        queues().send_message(
            QueueUrl=DLQ_URL,
            MessageBody=record["body"],
            MessageAttributes={
                "ErrorKind": {"DataType": "String", "StringValue": kind},
                "ErrorMessage": {"DataType": "String", "StringValue": detail[:1024]},
            },
        )
    except (BotoCoreError, ClientError):
        return str(record["messageId"])
    return None
