"""Logs: structured JSON with a correlation id; never a full number, the text, or a secret."""

from __future__ import annotations

import json

from relay.observability import logger
from relay_local.sandbox import Fault

from tests.conftest import API_KEY, TOKENS, bearer, fluents_message, lancepilot_message, load_event


def test_logs_are_json_with_correlation_id_and_no_personal_data(
    webhook, lancepilot, fluents, logs, capfd
):
    logger.setLevel("DEBUG")
    try:
        lancepilot.enqueue(Fault.status(503), Fault.reset_before_read())
        fluents.enqueue(
            Fault.status(400, {"message": "bad", "error": "Bad Request", "statusCode": 400})
        )
        webhook.post(lancepilot_message(), headers=bearer())
        webhook.post(fluents_message(), headers=bearer(), event="http_post_fluents.json")
        webhook.post(fluents_message(), headers=bearer("wrong-key"))
    finally:
        logger.setLevel("INFO")
    out = logs.getvalue()
    err = "".join(capfd.readouterr())  # anything else (urllib3's own warnings, say)

    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines, "the handler logged nothing"
    everything = out + err
    for secret in (
        "14155550123",
        "4915123456789",
        "12025550143",
        "Your order",
        "913402",
        API_KEY,
        TOKENS["lancepilot"],
        TOKENS["fluents"],
        "wrong-key",
    ):
        assert secret not in everything, f"{secret!r} leaked into the logs"
    outcomes = [line for line in lines if "outcome" in line]
    assert {line["outcome"] for line in outcomes} == {"delivered", "provider_rejected"}
    delivered = next(line for line in outcomes if line["outcome"] == "delivered")
    assert delivered["to"] == "+141******23"
    assert delivered["attempts"] == 3
    assert (
        delivered["correlation_id"]
        == load_event("http_post_lancepilot.json")["requestContext"]["requestId"]
    )
    assert any(line["message"] == "provider attempt failed, retrying" for line in lines)
