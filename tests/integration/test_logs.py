"""Logs: structured JSON with a correlation id; never a full number, the text, or a secret."""

from __future__ import annotations

import json
import time

from relay.auth import sign
from relay.observability import logger
from relay_local.sandbox import Fault
from tests.conftest import (
    API_KEY,
    SIGNING_SECRET,
    TOKENS,
    bearer,
    fluents_message,
    lancepilot_message,
    load_event,
)

SENSITIVE = (
    "14155550123",
    "4915123456789",
    "12025550143",
    "Your order",
    "913402",
    "Grüße",
    API_KEY,
    TOKENS["lancepilot"],
    TOKENS["fluents"],
    "wrong-key",
    SIGNING_SECRET,
    SIGNING_SECRET.removeprefix("whsec_"),
)


def test_no_outcome_leaks_personal_data_or_secrets(webhook, lancepilot, fluents, logs, aws, capfd):
    logger.setLevel("DEBUG")
    body = json.dumps(lancepilot_message(text="Grüße")).encode()
    ts = int(time.time())
    signature = sign(SIGNING_SECRET, "msg_1", ts, body)
    try:
        lancepilot.enqueue(Fault.status(503), Fault.status(429))
        webhook.post(
            raw=body,
            headers={
                "webhook-id": "msg_1",
                "webhook-timestamp": str(ts),
                "webhook-signature": signature,
            },
        )  # retried, delivered
        fluents.enqueue(
            Fault.status(
                400, {"message": "bad +4915123456789", "error": "Bad Request", "statusCode": 400}
            )
        )
        webhook.post(fluents_message(), headers=bearer())  # refused by the provider
        lancepilot.enqueue(Fault.hang(1.5))
        webhook.post(lancepilot_message(), headers=bearer())  # 504
        lancepilot.set_default(Fault.status(503))
        webhook.post(lancepilot_message(), headers=bearer())  # 503
        lancepilot.set_default(None)
        webhook.post(fluents_message(to="+4915123456780"[:-1]), headers=bearer())  # 422
        webhook.post(fluents_message(), headers=bearer("wrong-key"))  # 401
        aws.secrets.put_secret_value(SecretId="webhook-relay/provider-tokens", SecretString="[]")
        webhook.post(fluents_message(), headers=bearer())  # 500 misconfigured (cached: may 201)
    finally:
        logger.setLevel("INFO")
    out = logs.getvalue()
    err = "".join(capfd.readouterr())  # anything else (urllib3's own warnings, say)

    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    for secret in (*SENSITIVE, signature, signature[3:]):
        assert secret not in out + err, f"{secret!r} leaked into the logs"
    assert {line.get("outcome") for line in lines} >= {
        "delivered",
        "provider_rejected",
        "timeout",
        "unavailable",
    }
    assert {line.get("status") for line in lines} >= {401, 422, 502, 503, 504}
    assert all(line["correlation_id"] for line in lines)


def test_outcome_line_carries_correlation_relay_id_masked_number_and_latency(
    webhook, lancepilot, logs
):
    answer = webhook.post(lancepilot_message(), headers=bearer())

    [outcome] = [json.loads(line) for line in logs.getvalue().splitlines() if '"outcome"' in line]
    assert outcome["outcome"] == "delivered"
    assert outcome["relay_id"] == answer.json["id"]
    assert outcome["provider"] == "lancepilot"
    assert outcome["to"] == "+141******23"
    assert outcome["provider_status"] == 201
    assert outcome["latency_ms"] >= 0
    assert (
        outcome["correlation_id"]
        == (load_event("http_post_lancepilot.json")["requestContext"]["requestId"])
    )


def test_the_delivery_path_logs_outcomes_per_message_without_leaks(
    delivery, aws, lancepilot, fluents, logs
):
    lancepilot.set_default(Fault.status(503))
    fluents.enqueue(
        Fault.status(400, {"message": "bad", "error": "Bad Request", "statusCode": 400})
    )
    ids = [
        aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps(body))["MessageId"]
        for body in (
            lancepilot_message(),
            fluents_message(),
            fluents_message(text="Grüße"),
            {"to": "+14155550123", "text": "Your order"},
        )
    ]

    delivery.poll_once()

    out = logs.getvalue()
    for secret in SENSITIVE:
        assert secret not in out, f"{secret!r} leaked into the logs"
    lines = [json.loads(line) for line in out.splitlines()]
    outcomes = [
        (line["correlation_id"], line["outcome"])
        for line in lines
        if line.get("outcome") in ("delivered", "dead_lettered", "retry")
    ]
    # One outcome per message, under its own message id. Which Fluents message got the 400
    # depends on which arrived first: they are sent concurrently.
    assert sorted(cid for cid, _ in outcomes) == sorted(ids)
    assert dict(outcomes)[ids[0]] == "retry"
    assert dict(outcomes)[ids[3]] == "dead_lettered"
    assert {dict(outcomes)[ids[1]], dict(outcomes)[ids[2]]} == {"delivered", "dead_lettered"}
