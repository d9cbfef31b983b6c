"""Outcomes as CloudWatch metrics: the EMF lines the handlers print, read as CloudWatch would."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from relay_local.esm import event_record
from relay_local.lambda_runtime import LambdaContext, load_function
from relay_local.resources import load_template
from relay_local.sandbox import Fault
from tests.conftest import Webhook, bearer, fluents_message, lancepilot_message

NAMESPACE = "WebhookRelay"


def published(capsys) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], list[float]]:
    """Every data point in the captured EMF lines: {(metric, unit, dimensions): values}.

    A data point counts once per dimension set it is published under, as CloudWatch does.
    """
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    for blob in lines:
        assert {d["Namespace"] for d in blob["_aws"]["CloudWatchMetrics"]} == {NAMESPACE}
    return published_from(lines)


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


def test_both_providers_in_one_batch_with_retries_and_provider_errors(
    delivery, aws, lancepilot, fluents, capsys
):
    # One Lancepilot message is told to come back in 120 s (too long to wait in-process: it is
    # handed back); one Fluents message meets a 500 and succeeds on its next attempt.
    lancepilot.enqueue(Fault.status(503, retry_after="120"))
    fluents.enqueue(Fault.status(500))
    for i in range(3):
        aws.sqs.send_message(
            QueueUrl=aws.queue_url, MessageBody=json.dumps(lancepilot_message(text=f"lp{i}"))
        )
    for i in range(4):
        aws.sqs.send_message(
            QueueUrl=aws.queue_url, MessageBody=json.dumps(fluents_message(text=f"fl{i}"))
        )
    capsys.readouterr()

    result = delivery.poll_once()

    assert len(result.failed) == 1
    points = published(capsys)
    assert total(points, "MessagesDelivered", Provider="lancepilot") == 2
    assert total(points, "MessagesDelivered", Provider="fluents") == 4
    assert len(points[("DeliveryLatency", "Milliseconds", (("Provider", "lancepilot"),))]) == 2
    assert len(points[("DeliveryLatency", "Milliseconds", (("Provider", "fluents"),))]) == 4
    assert total(points, "MessagesRetried", Provider="lancepilot", Reason="unavailable") == 1
    assert total(points, "MessagesRetried", Provider="fluents") == 0
    assert total(points, "ProviderErrors", Provider="lancepilot", StatusClass="5xx") == 1
    assert total(points, "ProviderErrors", Provider="fluents", StatusClass="5xx") == 1


def test_a_batch_of_a_hundred_stays_within_emf_limits(relay_env, aws, fluents, capsys):
    handler = load_function("delivery").lambda_handler
    records = []
    for i in range(100):
        aws.sqs.send_message(
            QueueUrl=aws.queue_url, MessageBody=json.dumps(fluents_message(text=f"m{i}"))
        )
    while len(records) < 100:
        records += [
            event_record(m, "arn:aws:sqs:us-east-1:123456789012:q")
            for m in aws.sqs.receive_message(
                QueueUrl=aws.queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
            )["Messages"]
        ]
    capsys.readouterr()

    assert handler({"Records": records}, LambdaContext()) == {"batchItemFailures": []}

    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    for blob in lines:
        directive = blob["_aws"]["CloudWatchMetrics"][0]
        names = {d for dims in directive["Dimensions"] for d in dims}
        assert names <= set(blob)  # every dimension has its value in the blob
        assert len(names) <= 30
        for metric in directive["Metrics"]:
            values = blob[metric["Name"]]
            assert len(values if isinstance(values, list) else [values]) <= 100
    points = published_from(lines)
    assert total(points, "MessagesDelivered", Provider="fluents") == 100
    assert len(points[("DeliveryLatency", "Milliseconds", (("Provider", "fluents"),))]) == 100


def test_every_alarm_watches_a_metric_the_relay_really_publishes(
    relay_env, monkeypatch, aws, lancepilot, fluents, capsys
):
    """The alarms' metrics and dimension sets, against EMF from real invocations."""
    webhook = Webhook(load_function("webhook"))
    capsys.readouterr()
    for sandbox, message in ((lancepilot, lancepilot_message), (fluents, fluents_message)):
        webhook.post(message(), headers=bearer())  # delivered
        sandbox.enqueue(Fault.status(429, retry_after="120"))
        webhook.post(message(), headers=bearer())  # throttled
        sandbox.set_default(Fault.status(503))
        webhook.post(message(), headers=bearer())  # 5xx
        sandbox.set_default(None)
        sandbox.enqueue(Fault.hang(1.5))
        webhook.post(message(), headers=bearer())  # timeout
    webhook.post(lancepilot_message(), headers={"content-type": "application/json"})
    monkeypatch.setenv("LANCEPILOT_API_URL", "http://127.0.0.1:9/api/v3")
    monkeypatch.setenv("FLUENTS_API_URL", "http://127.0.0.1:9")
    unreachable = Webhook(load_function("webhook"))
    for message in (lancepilot_message, fluents_message):
        unreachable.post(message(), headers=bearer())  # connection
    emitted = {(name, dims) for (name, _, dims) in published(capsys)}
    emitted.add(("MessagesFailed", (("Provider", "unknown"),)))  # an unreadable queued message

    for alarm in (
        a for a in load_template()["Resources"].values() if a["Type"] == "AWS::CloudWatch::Alarm"
    ):
        for stat in _relay_metric_stats(alarm["Properties"]):
            assert stat in emitted, stat


def _relay_metric_stats(props):
    """(metric, dimensions) of every relay metric an alarm reads."""
    metrics = [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
    if "MetricName" in props:
        metrics.append(props)
    for metric in metrics:
        if metric["Namespace"] == {"Ref": "MetricsNamespace"}:
            yield (
                metric["MetricName"],
                tuple((d["Name"], d["Value"]) for d in metric["Dimensions"]),
            )


def published_from(lines):
    points: dict = defaultdict(list)
    for blob in lines:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                values = blob[metric["Name"]]
                values = values if isinstance(values, list) else [values]
                for dimension_set in directive["Dimensions"]:
                    key = tuple((name, blob[name]) for name in dimension_set)
                    points[(metric["Name"], metric["Unit"], key)] += values
    return points
