"""Outcomes as CloudWatch metrics: the EMF lines the handlers print, read as CloudWatch would."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from relay_local.sandbox import Fault
from tests.conftest import bearer, fluents_message, lancepilot_message

NAMESPACE = "WebhookRelay"


def published(capsys) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]:
    """Every data point in the captured EMF lines: {(metric, dimensions): values}.

    A data point counts once per dimension set it is published under, as CloudWatch does.
    """
    points: dict = defaultdict(list)
    for line in capsys.readouterr().out.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == NAMESPACE
            for metric in directive["Metrics"]:
                values = blob[metric["Name"]]
                values = values if isinstance(values, list) else [values]
                for dimension_set in directive["Dimensions"]:
                    key = tuple((name, blob[name]) for name in dimension_set)
                    points[(metric["Name"], metric["Unit"], key)] += values
    return points


def total(points, name, unit="Count", **dimensions) -> float:
    key = (name, unit, tuple(dimensions.items()))
    return sum(points.get(key, []))


# --- HTTP ------------------------------------------------------------------------------------


def test_a_delivery_is_counted_and_timed_per_provider(webhook, lancepilot, capsys):
    capsys.readouterr()
    webhook.post(lancepilot_message(), headers=bearer())

    points = published(capsys)

    assert total(points, "MessagesDelivered", Provider="lancepilot") == 1
    [latency] = points[("DeliveryLatency", "Milliseconds", (("Provider", "lancepilot"),))]
    assert latency > 0
    # No stray dimension (Powertools would add "service"): alarms query {Provider} exactly.
    assert all(dims[0][0] == "Provider" for (name, _, dims) in points if name != "ColdStart")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"headers": {"content-type": "application/json"}}, "unauthenticated"),
        ({"headers": bearer(), "raw": b"[1]"}, "malformed"),
        ({"headers": {**bearer(), "content-type": "text/plain"}}, "unsupported_media_type"),
    ],
)
def test_refusals_before_any_send_are_counted_with_their_reason(webhook, capsys, kwargs, reason):
    capsys.readouterr()
    webhook.post(
        kwargs.pop("body", lancepilot_message()) if "raw" not in kwargs else None, **kwargs
    )

    points = published(capsys)

    assert total(points, "RequestsRefused", Provider="unknown") == 1
    assert total(points, "RequestsRefused", Provider="unknown", Reason=reason) == 1


def test_invalid_messages_are_refusals(webhook, capsys):
    capsys.readouterr()
    webhook.post(lancepilot_message(to="12"), headers=bearer())

    assert total(published(capsys), "RequestsRefused", Provider="unknown", Reason="invalid") == 1


def test_a_provider_refusal_is_a_failure_and_a_provider_error(webhook, fluents, capsys):
    fluents.enqueue(Fault.status(400, {"message": "no", "error": "Bad Request", "statusCode": 400}))
    capsys.readouterr()

    webhook.post(fluents_message(), headers=bearer())

    points = published(capsys)
    assert total(points, "MessagesFailed", Provider="fluents") == 1
    assert total(points, "MessagesFailed", Provider="fluents", Reason="provider_rejected") == 1
    assert total(points, "ProviderErrors", Provider="fluents", StatusClass="4xx") == 1
    assert total(points, "MessagesDelivered", Provider="fluents") == 0


def test_every_failed_attempt_is_a_provider_error(webhook, lancepilot, capsys):
    lancepilot.set_default(Fault.status(503))
    capsys.readouterr()

    webhook.post(lancepilot_message(), headers=bearer())

    points = published(capsys)
    assert total(points, "ProviderErrors", Provider="lancepilot", StatusClass="5xx") == 4
    assert total(points, "MessagesFailed", Provider="lancepilot", Reason="unavailable") == 1


def test_no_answer_is_an_ambiguous_send(webhook, lancepilot, capsys):
    lancepilot.enqueue(Fault.hang(1.5))
    capsys.readouterr()

    webhook.post(lancepilot_message(), headers=bearer())

    points = published(capsys)
    assert total(points, "AmbiguousSends", Provider="lancepilot") == 1
    assert total(points, "ProviderErrors", Provider="lancepilot", StatusClass="timeout") == 1
    assert total(points, "MessagesFailed", Provider="lancepilot", Reason="timeout") == 1


def test_replays_and_queued_messages_are_counted(webhook, lancepilot, capsys):
    body = lancepilot_message(idempotency_key="k-metrics")
    webhook.post(body, headers=bearer())
    capsys.readouterr()

    webhook.post(body, headers=bearer())
    webhook.post(fluents_message(), headers={**bearer(), "prefer": "respond-async"})

    points = published(capsys)
    assert total(points, "DuplicatesSuppressed", Provider="lancepilot") == 1
    assert total(points, "MessagesQueued", Provider="fluents") == 1
    assert total(points, "MessagesDelivered", Provider="lancepilot") == 0


# --- SQS -------------------------------------------------------------------------------------


def test_a_mixed_batch_gives_correct_figures_per_provider(
    delivery, aws, lancepilot, fluents, capsys
):
    fluents.set_default(
        Fault.status(400, {"message": "no", "error": "Bad Request", "statusCode": 400})
    )
    bodies = [json.dumps(lancepilot_message(text=f"lp{i}")) for i in range(3)]
    bodies += [json.dumps(fluents_message(text=f"fl{i}")) for i in range(2)]
    bodies += [json.dumps({"to": "+14155550123"}), "not json"]
    for body in bodies:
        aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)
    capsys.readouterr()

    result = delivery.poll_once()

    assert (result.received, result.failed) == (7, [])
    points = published(capsys)
    assert total(points, "MessagesDelivered", Provider="lancepilot") == 3
    assert total(points, "MessagesDelivered", Provider="fluents") == 0
    assert len(points[("DeliveryLatency", "Milliseconds", (("Provider", "lancepilot"),))]) == 3
    assert total(points, "MessagesFailed", Provider="fluents") == 2
    assert total(points, "MessagesFailed", Provider="fluents", Reason="provider_rejected") == 2
    assert total(points, "ProviderErrors", Provider="fluents", StatusClass="4xx") == 2
    assert total(points, "MessagesFailed", Provider="unknown", Reason="invalid") == 2
    assert total(points, "MessagesFailed", Provider="lancepilot") == 0


def test_records_handed_back_are_counted_as_retried(delivery, aws, lancepilot, capsys):
    lancepilot.set_default(Fault.status(503))
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps(lancepilot_message()))
    capsys.readouterr()

    delivery.poll_once()

    points = published(capsys)
    assert total(points, "MessagesRetried", Provider="lancepilot") == 1
    assert total(points, "MessagesRetried", Provider="lancepilot", Reason="unavailable") == 1


def test_a_redriven_duplicate_is_counted_not_sent(delivery, aws, lancepilot, capsys):
    for _ in range(2):
        aws.sqs.send_message(
            QueueUrl=aws.queue_url,
            MessageBody=json.dumps(lancepilot_message()),
            MessageAttributes={"RelayId": {"DataType": "String", "StringValue": "r-1"}},
        )
        delivery.poll_once()

    points = published(capsys)
    assert total(points, "MessagesDelivered", Provider="lancepilot") == 1
    assert total(points, "DuplicatesSuppressed", Provider="lancepilot") == 1
