"""Floor for POST /v1/messages: authenticate, validate, send once, answer. boto3 and urllib3 only.

The same essential work as functions/webhook/app.py on a synchronous request; see
``benchmarks/floor/__init__.py`` for what it leaves out.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import time
import uuid
from typing import Any

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import ClientError

# The relay's bounds on AWS calls (relay.secrets.FAST_FAIL), so both wait the same.
FAST_FAIL = Config(connect_timeout=1.0, read_timeout=2.0, retries={"total_max_attempts": 2})
E164 = re.compile(r"\+[1-9][0-9]{7,14}")
MAX_BODY = 64 * 1024
SECRET_MAX_AGE = 300.0
TTL = int(os.environ.get("IDEMPOTENCY_TTL_SECONDS", "86400"))

TABLE = os.environ["IDEMPOTENCY_TABLE"]
AUTH_SECRET = os.environ["RELAY_AUTH_SECRET"]
TOKENS_SECRET = os.environ["PROVIDER_TOKENS_SECRET"]
URLS = {
    "lancepilot": os.environ["LANCEPILOT_API_URL"].rstrip("/"),
    "fluents": os.environ["FLUENTS_API_URL"].rstrip("/"),
}
WORKSPACE = os.environ.get("LANCEPILOT_WORKSPACE_ID") or None
SENDER = os.environ.get("FLUENTS_FROM_NUMBER") or None

session = boto3.session.Session()
secrets = session.client("secretsmanager", config=FAST_FAIL)
dynamodb = session.client("dynamodb", config=FAST_FAIL)
http = urllib3.PoolManager(maxsize=10, retries=False, headers={"User-Agent": "floor/0.1"})
TIMEOUT = urllib3.Timeout(connect=3.05, read=8.0)
_cache: dict[str, tuple[float, Any]] = {}


def secret(secret_id: str) -> Any:
    cached = _cache.get(secret_id)
    if cached is None or time.monotonic() - cached[0] > SECRET_MAX_AGE:
        value = json.loads(secrets.get_secret_value(SecretId=secret_id)["SecretString"])
        cached = _cache[secret_id] = (time.monotonic(), value)
    return cached[1]


def answer(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    body = event.get("body") or ""
    try:
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    except (binascii.Error, ValueError):
        return answer(400, {"message": "bad base64"})
    if len(raw) > MAX_BODY:
        return answer(413, {"message": "too large"})
    scheme, _, token = headers.get("authorization", "").partition(" ")
    keys = secret(AUTH_SECRET)["api_keys"]
    if scheme.lower() != "bearer" or not any(
        [hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys]
    ):
        return answer(401, {"message": "not authenticated"})
    try:
        data = json.loads(raw)
    except ValueError:
        return answer(400, {"message": "not JSON"})
    message = validate(data)
    if isinstance(message, str):
        return answer(422, {"message": message})
    key = data.get("idempotency_key") or headers.get("idempotency-key") or None
    return send_once(message, key) if key else send(message, str(uuid.uuid4()))[1]


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


def send_once(message: dict[str, Any], key: str) -> dict[str, Any]:
    record = {"S": f"floor#deliver#{key}"}
    now = int(time.time())
    try:
        dynamodb.put_item(
            TableName=TABLE,
            Item={
                "id": record,
                "expiration": {"N": str(now + TTL)},
                "status": {"S": "INPROGRESS"},
            },
            ConditionExpression="attribute_not_exists(#id) OR #expiry < :now",
            ExpressionAttributeNames={"#id": "id", "#expiry": "expiration"},
            ExpressionAttributeValues={":now": {"N": str(now)}},
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
            return answer(503, {"message": "idempotency store unavailable"})
        item = dynamodb.get_item(TableName=TABLE, Key={"id": record}).get("Item", {})
        if item.get("status", {}).get("S") == "COMPLETED":
            replay: dict[str, Any] = json.loads(item["data"]["S"])
            return replay
        return answer(409, {"message": "in progress"})
    ok, result = send(message, str(uuid.uuid4()))
    if ok:
        dynamodb.update_item(
            TableName=TABLE,
            Key={"id": record},
            UpdateExpression="SET #status = :done, #data = :data",
            ExpressionAttributeNames={"#status": "status", "#data": "data"},
            ExpressionAttributeValues={
                ":done": {"S": "COMPLETED"},
                ":data": {"S": json.dumps(result)},
            },
        )
    else:
        dynamodb.delete_item(TableName=TABLE, Key={"id": record})
    return result


def send(message: dict[str, Any], relay_id: str) -> tuple[bool, dict[str, Any]]:
    """POST the provider's documented request; (delivered, the API Gateway answer)."""
    provider = message["provider"]
    base = URLS[provider]
    if provider == "lancepilot":
        number = message["to"][1:]
        url = f"{base}/workspaces/{message['workspace']}/contacts/number/{number}/messages/text"
        payload: dict[str, Any] = {"text": {"body": message["text"]}}
    else:
        url = f"{base}/v1/messages"
        payload = {"to_number": message["to"], "from_number": message["from"]}
        payload["message"] = message["text"]
    token = secret(TOKENS_SECRET)[provider]
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
        return False, answer(504, {"message": "no answer", "id": relay_id})
    if 200 <= reply.status < 300:
        return True, answer(
            201,
            {
                "id": relay_id,
                "status": "delivered",
                "provider": provider,
                "provider_status": reply.status,
                "attempts": 1,
            },
        )
    status = 503 if reply.status >= 500 or reply.status in (408, 429) else 502
    return False, answer(status, {"message": "provider error", "provider_status": reply.status})
