"""Kill the delivery worker mid-batch, as a Lambda timeout would, and watch every message
come back after the visibility timeout and get delivered: once, except the sends that were in
flight at the kill (their outcome was never learned, so they may go out again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest

from relay_local import resources
from relay_local.lambda_runtime import REPO
from relay_local.sandbox import ProviderSandbox
from tests.conftest import API_KEY, SIGNING_SECRET, TOKENS, WORKSPACE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

LAMBDA_TIMEOUT_S = 20  # the worker's; in-progress idempotency records expire with it
# The queue's visibility timeout, at least the function's timeout (as SQS event sources
# require; the template uses six times): shortened from 360 s so the test does not wait.
VISIBILITY_S = LAMBDA_TIMEOUT_S
CONCURRENCY = 2


@pytest.fixture
def stack(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    made = resources.create(
        TOKENS, {"api_keys": [API_KEY], "signing_secrets": [SIGNING_SECRET]}, max_receive_count=5
    )
    boto3.client("sqs").set_queue_attributes(
        QueueUrl=made.queue_url, Attributes={"VisibilityTimeout": str(VISIBILITY_S)}
    )
    sandbox = ProviderSandbox("lancepilot", token=TOKENS["lancepilot"], latency=0.6).start()
    env = {
        **os.environ,
        "PROVIDER_TOKENS_SECRET": made.tokens_secret,
        "RELAY_AUTH_SECRET": made.auth_secret,
        "IDEMPOTENCY_TABLE": made.table,
        "DELIVERY_QUEUE_URL": made.queue_url,
        "DEAD_LETTER_QUEUE_URL": made.dlq_url,
        "MAX_RECEIVE_COUNT": "10",
        "LANCEPILOT_API_URL": sandbox.base_url,
        "FLUENTS_API_URL": sandbox.base_url,
        "PROVIDER_CONCURRENCY": str(CONCURRENCY),
        "HTTP_CONNECT_TIMEOUT": "0.5",
        "HTTP_READ_TIMEOUT": "1",
        "SEND_BUDGET_SECONDS": "2",
        "REDELIVERY_BASE_SECONDS": "1",
        "REDELIVERY_MAX_SECONDS": "2",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }
    yield made, sandbox, env
    sandbox.stop()
    server.stop()


def worker(env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "relay_local.worker", "--timeout", str(LAMBDA_TIMEOUT_S)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "worker ready"
    return process


def test_a_killed_worker_loses_nothing_and_resends_only_what_was_in_flight(stack):
    made, sandbox, env = stack
    sqs = boto3.client("sqs")
    tags = [f"crash-{i:02d}" for i in range(10)]
    for tag in tags:
        body = {"provider": "lancepilot", "to": "+14155550123", "text": tag, "workspace": WORKSPACE}
        sqs.send_message(QueueUrl=made.queue_url, MessageBody=json.dumps(body))

    first = worker(env)
    dynamodb = boto3.client("dynamodb")
    give_up = time.monotonic() + 30
    while True:  # some sends done, some in flight: the moment to pull the plug
        statuses = [i["status"]["S"] for i in dynamodb.scan(TableName=made.table)["Items"]]
        if statuses.count("COMPLETED") >= 2 and "INPROGRESS" in statuses:
            break
        assert time.monotonic() < give_up, f"the worker never got going: {statuses}"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # no cleanup, no deletes, no idempotency updates
    first.wait()
    killed_at = time.time()
    time.sleep(1.0)  # the provider finishes the requests that were in flight, into the void
    reached_before_restart = {json.loads(r.body)["text"]["body"] for r in sandbox.received}

    # The records of sends in flight are still INPROGRESS, expiring with the Lambda's time.
    items = dynamodb.scan(TableName=made.table)["Items"]
    in_progress = [i for i in items if i["status"]["S"] == "INPROGRESS"]
    assert in_progress, "the kill should have caught sends in flight"
    for item in in_progress:
        expires = int(item["in_progress_expiration"]["N"]) / 1000
        assert expires <= killed_at + LAMBDA_TIMEOUT_S

    second = worker(env)
    try:
        deadline = time.monotonic() + VISIBILITY_S + 30
        while time.monotonic() < deadline:
            sent = {json.loads(r.body)["text"]["body"] for r in sandbox.accepted()}
            if sent >= set(tags):
                break
            time.sleep(0.2)
        time.sleep(2)  # room for a stray resend to show up
    finally:
        second.terminate()
        second.wait(timeout=10)

    arrivals = [json.loads(r.body)["text"]["body"] for r in sandbox.received]
    counts = {tag: arrivals.count(tag) for tag in tags}
    assert all(count >= 1 for count in counts.values()), counts  # nothing lost
    duplicated = {tag for tag, count in counts.items() if count > 1}
    # Only sends that reached the provider before the restart can repeat, never more than
    # were in flight at the kill (one round at the concurrency limit), and never more than
    # once more each.
    assert duplicated <= reached_before_restart, counts
    assert len(duplicated) <= CONCURRENCY, counts
    assert max(counts.values()) <= 2, counts
    assert sqs.receive_message(QueueUrl=made.dlq_url).get("Messages") is None
