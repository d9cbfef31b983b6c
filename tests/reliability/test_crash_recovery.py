"""Kill the delivery worker mid-batch, as a Lambda timeout would, and watch every message
come back after the visibility timeout and get delivered: once, except the sends that were in
flight at the kill (their outcome was never learned, so they go out again).

Two provider stand-ins, one scenario each:

- "copy refused": the provider refuses (422) the second copy of a message caught in flight, as
  one that spots duplicates might. Those messages are parked, each saying PossiblyDelivered,
  though only the record the kill left INPROGRESS could tell the relay so.
- "copy accepted": the provider follows its document (../shared/specs: no duplicate
  detection) and accepts the second copy. Those messages are delivered twice: the duplicates
  a crash costs, at most one per send in flight at the kill, each counted as ambiguous (the
  relay leaves an ambiguous-send marker for each record the kill left INPROGRESS).

Each scenario waits out one visibility timeout (VISIBILITY_S, 26 s): about 32 s each on a
2-core machine. With ``RELAY_CRASH_REPORT=<path>`` the counts of every scenario run are
written there as JSON (``make reliability``: docs/runs/crash-<commit>.json).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import urllib3

from relay.batch import BATCH_MARGIN_SECONDS
from relay_local import resources
from relay_local.checkout import revision
from relay_local.lambda_runtime import REPO
from relay_local.sandbox import Fault, ProviderSandbox
from tests.conftest import API_KEY, SIGNING_SECRET, TOKENS, WORKSPACE
from tests.reliability.harness import CODE_PATHS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from relay_local.sandbox import Received

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reliability")]

# The worker's; in-progress idempotency records expire with it. Sends start only while an
# attempt (1 s connect + 4 s read, below) and the batch's margin for the AWS calls after a
# send still fit: this leaves 2 s to start them in.
LAMBDA_TIMEOUT_S = math.ceil(BATCH_MARGIN_SECONDS) + 5 + 2
# The queue's visibility timeout, at least the function's timeout (as SQS event sources
# require; the template uses six times): shortened from 360 s so the test does not wait.
VISIBILITY_S = LAMBDA_TIMEOUT_S
# The template's MaxReceiveCount, the function's MAX_RECEIVE_COUNT: the relay parks a message
# with its reason by then; the queue's redrive policy allows one receive more for that.
RECEIVES = 5
CONCURRENCY = 2
LATENCY_S = 0.6  # each provider answer: sends go in rounds of CONCURRENCY, this far apart
MESSAGES = 10  # one batch: the worker takes them all in its one invocation
# The worker's poller starts just before it prints "worker ready", so its first receive (which
# starts the visibility timeout) and its invocation may begin a little before we read the line.
STARTUP_SLACK_S = 0.5
# What the provider answers the second copy of a message caught in flight (as one that spots
# duplicates might): a permanent refusal, which parks the message at once.
REFUSAL = Fault.status(422, {"message": "Validation error", "errors": {"text": ["duplicate"]}})
# The provider stand-in's answer to the second copy: refused, or accepted as the documents say.
SCENARIOS = {"copy refused": REFUSAL, "copy accepted": None}
REPORT_ENV = "RELAY_CRASH_REPORT"
QUEUE_COUNTS = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]


@dataclass(frozen=True)
class Send:
    """One request as the provider stand-in saw it (times on this process's monotonic clock)."""

    tag: str
    arrived: float  # the stand-in had read the whole request
    answered: float  # it wrote its answer, whether or not the client was still alive to read it
    status: int | None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class SendLog:
    """The stand-in's ``on_request`` hook, which fires as each answer is about to be written.

    ``Received.answered`` alone cannot tell a send the worker heard back from one that was in
    flight at the kill: the stand-in answers 201 into the void either way.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sends: list[Send] = []

    def __call__(self, received: Received) -> None:
        send = Send(tag_of(received), received.at, time.monotonic(), received.answered)
        with self._lock:
            self._sends.append(send)

    def sends(self) -> list[Send]:
        with self._lock:
            return list(self._sends)


def tag_of(received: Received) -> str:
    """Which message a request sends: the text is its tag."""
    return str(json.loads(received.body)["text"]["body"])


@dataclass
class Stack:
    made: resources.StackResources
    sandbox: ProviderSandbox
    log: SendLog
    env: dict[str, str]


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto's backends live in this process, whichever server serves them: each scenario starts
    # from none (the queues and the table are created again below).
    reset = f"http://{host}:{port}/moto-api/reset"
    assert urllib3.request("POST", reset, retries=False).status == 200
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    made = resources.create(
        TOKENS,
        {"api_keys": [API_KEY], "signing_secrets": [SIGNING_SECRET]},
        max_receive_count=RECEIVES,
    )
    boto3.client("sqs").set_queue_attributes(
        QueueUrl=made.queue_url, Attributes={"VisibilityTimeout": str(VISIBILITY_S)}
    )
    log = SendLog()
    sandbox = ProviderSandbox(
        "lancepilot", token=TOKENS["lancepilot"], latency=LATENCY_S, on_request=log
    ).start()
    env = {
        **os.environ,
        "PROVIDER_TOKENS_SECRET": made.tokens_secret,
        "RELAY_AUTH_SECRET": made.auth_secret,
        "IDEMPOTENCY_TABLE": made.table,
        "DELIVERY_QUEUE_URL": made.queue_url,
        "DEAD_LETTER_QUEUE_URL": made.dlq_url,
        "MAX_RECEIVE_COUNT": str(made.max_receive_count),
        "LANCEPILOT_API_URL": sandbox.base_url,
        "FLUENTS_API_URL": sandbox.base_url,
        "PROVIDER_CONCURRENCY": str(CONCURRENCY),
        # Far above LATENCY_S: on a loaded machine a 1 s read timeout turned a slow answer
        # into a hand-back with a 1-2 s backoff, which came back long before the timeout.
        "HTTP_CONNECT_TIMEOUT": "1",
        "HTTP_READ_TIMEOUT": "4",
        "SEND_BUDGET_SECONDS": "5",
        "REDELIVERY_BASE_SECONDS": "1",
        "REDELIVERY_MAX_SECONDS": "2",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }
    yield Stack(made, sandbox, log, env)
    sandbox.stop()
    urllib3.request("POST", reset, retries=False)
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


def queue_counts(sqs: Any, url: str) -> dict[str, int]:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=QUEUE_COUNTS)["Attributes"]
    return {name: int(attributes[name]) for name in QUEUE_COUNTS}


def records(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    return list(dynamodb.scan(TableName=table, ConsistentRead=True)["Items"])


def statuses(items: list[dict[str, Any]]) -> list[str]:
    return [item["status"]["S"] for item in items]


@pytest.fixture(scope="module")
def crash_report() -> Iterator[dict[str, dict[str, Any]]]:
    """Each scenario's counts, printed as it ends (``pytest -s`` or ``-rA``), and written as JSON
    to ``$RELAY_CRASH_REPORT`` (if set) once every scenario run has ended: the figures
    docs/reliability.md quotes for crash recovery."""
    scenarios: dict[str, dict[str, Any]] = {}
    yield scenarios
    if path := os.environ.get(REPORT_ENV):
        written = {
            **revision(REPO, *CODE_PATHS),
            "lambda timeout, seconds": LAMBDA_TIMEOUT_S,
            "visibility timeout, seconds": VISIBILITY_S,
            "provider concurrency": CONCURRENCY,
            "provider latency, seconds": LATENCY_S,
            "scenarios": scenarios,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_killed_worker_loses_nothing_and_resends_only_what_was_in_flight(
    stack: Stack, scenario: str, crash_report: dict[str, dict[str, Any]]
) -> None:
    began = time.monotonic()
    made, log = stack.made, stack.log
    sqs, dynamodb = boto3.client("sqs"), boto3.client("dynamodb")
    tags = [f"crash-{i:02d}" for i in range(MESSAGES)]
    for tag in tags:
        body = {"provider": "lancepilot", "to": "+14155550123", "text": tag, "workspace": WORKSPACE}
        sqs.send_message(QueueUrl=made.queue_url, MessageBody=json.dumps(body))

    first = worker(stack.env)
    ready = time.monotonic()
    give_up = ready + 30
    while True:
        # The moment to pull the plug: some sends done, and the relay has recorded every answer
        # it got (so none is between its answer and its record, which would make it ambiguous
        # too), while the next round is in flight. That round's answers are LATENCY_S away.
        now = statuses(records(dynamodb, made.table))
        answered = sum(1 for s in log.sends() if s.accepted)
        completed = now.count("COMPLETED")
        if completed >= 2 and completed == answered and "INPROGRESS" in now:
            break
        assert time.monotonic() < give_up, f"the worker never got going: {now}"
        time.sleep(0.02)
    time.sleep(0.1)  # let the requests just started reach the provider
    # The whole lot is in the dying worker's one batch, so all of it waits out the timeout.
    assert queue_counts(sqs, made.queue_url) == dict(
        zip(QUEUE_COUNTS, [0, MESSAGES, 0], strict=True)
    )
    signalled = time.monotonic()
    first.send_signal(signal.SIGKILL)  # no cleanup, no deletes, no idempotency updates
    first.wait()
    dead = time.monotonic()
    time.sleep(LATENCY_S + 0.4)  # the provider answers the requests in flight, into the void

    # What the dead worker left behind. Every send answered before the kill was recorded as
    # COMPLETED (the cut was clean), so "heard" below means the relay knew it was delivered.
    def heard(send: Send) -> bool:  # answered while the worker was alive to read it
        return send.answered < signalled

    def caught(send: Send) -> bool:  # in flight at the kill: its answer went into the void
        return send.arrived < dead and send.answered >= signalled

    items = records(dynamodb, made.table)
    before = [s for s in log.sends() if s.arrived < dead]
    in_flight = [s for s in before if caught(s)]
    assert statuses(items).count("COMPLETED") == len([s for s in before if heard(s)]), (
        "the cut was not clean (an answer came between the check and the kill: a stall?)",
        statuses(items),
        before,
    )
    assert all(s.accepted for s in before if heard(s)), before
    assert in_flight, "the kill should have caught sends in flight"
    assert len(in_flight) <= CONCURRENCY, in_flight

    # The records of sends in flight are still INPROGRESS, and expire when the killed
    # invocation's time would have run out: not sooner (while it may still be sending, nobody
    # else may take the message over), not later (the redelivery would wait on them).
    in_progress = [item for item in items if item["status"]["S"] == "INPROGRESS"]
    assert len(in_progress) >= len(in_flight), (in_progress, in_flight)
    wall_to_monotonic = time.time() - time.monotonic()
    started_after = ready - STARTUP_SLACK_S  # the invocation began after this ...
    started_before = min(s.arrived for s in before)  # ... and before its first send
    for item in in_progress:
        expires = int(item["in_progress_expiration"]["N"]) / 1000 - wall_to_monotonic
        assert expires >= started_after + LAMBDA_TIMEOUT_S, (expires - started_after, item)
        assert expires <= started_before + LAMBDA_TIMEOUT_S + 0.05, (expires - started_before, item)

    # The messages caught in flight: the provider may have them (its answers went into the
    # void), so the relay must treat them as possibly delivered from here on.
    ambiguous_tags = {s.tag for s in in_flight}
    second_copy = SCENARIOS[scenario]
    refused = ambiguous_tags if second_copy is not None else set()
    if second_copy is not None:
        stack.sandbox.set_chooser(
            lambda received: second_copy if tag_of(received) in refused else None
        )
    second = worker(stack.env)
    try:
        # All back after the visibility timeout (measured from the killed worker's receive),
        # sent (the refused ones parked), and deleted from the queue: nothing left visible or
        # in flight.
        deadline = ready + VISIBILITY_S + 30
        while True:
            delivered = {s.tag for s in log.sends() if s.accepted and not caught(s)}
            counts = queue_counts(sqs, made.queue_url)
            if delivered >= set(tags) - refused and not any(counts.values()):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"not all delivered {deadline - dead:.0f} s after the kill: "
                    f"missing {sorted(set(tags) - delivered)}, delivery queue {counts}"
                )
            time.sleep(0.2)
    finally:
        second.terminate()
        second.wait(timeout=10)

    sends = log.sends()
    assert len(sends) == len(stack.sandbox.received)  # the hook saw every request
    assert stack.sandbox.violations() == []
    # Strictly, per message: sent once before the kill and heard back, never again; or sent
    # once after the kill (refused if a copy was in flight at the kill and the provider refuses
    # copies, else accepted), plus at most that one copy (ambiguous): twice at most.
    problems, ambiguous = {}, set()
    for tag in tags:
        mine = [s for s in sends if s.tag == tag]
        if any(heard(s) for s in mine):
            if len(mine) != 1:
                problems[tag] = ("delivered before the kill, then sent again", mine)
            continue
        after = [s for s in mine if s.arrived >= dead]
        copies = [s for s in mine if s.arrived < dead]
        answer = 422 if tag in refused else 201
        if [s.status for s in after] != [answer]:
            problems[tag] = (f"not sent exactly once after the kill, answered {answer}", mine)
        elif copies and (len(copies) > 1 or not caught(copies[0])):
            problems[tag] = ("a copy before the kill that was not in flight at it", mine)
        elif copies:
            ambiguous.add(tag)
        if len(mine) > 2:
            problems[tag] = ("sent more than twice", mine)
    assert problems == {}, problems
    assert ambiguous == ambiguous_tags, (ambiguous, ambiguous_tags)
    assert len(ambiguous) <= CONCURRENCY, ambiguous  # one round of sends, no more

    # The killed batch came back only after the visibility timeout, not when the worker died.
    redelivered = [s for s in sends if s.arrived >= dead]
    assert redelivered, "nothing was left for the restarted worker"
    back_after = min(s.arrived for s in redelivered) - started_after
    assert back_after >= VISIBILITY_S, f"redelivered {back_after:.2f} s after the receive"

    # Each message caught in flight and refused is parked with its reason, and says the
    # provider may have it: a redrive would send it a third time. Nothing else is parked (the
    # DLQ is empty below): with copies accepted, nothing at all.
    parked = take_dead_letters(sqs, made.dlq_url, len(refused))
    assert sorted(json.loads(letter["Body"])["text"] for letter in parked) == sorted(refused)
    flagged = 0
    for letter in parked:
        reason = {k: v["StringValue"] for k, v in letter["MessageAttributes"].items()}
        assert (reason["ErrorKind"], reason["ErrorStatus"]) == ("permanent", "422"), reason
        assert reason.get("PossiblyDelivered") == "true", reason
        flagged += 1
    # Every message ends delivered (a worker heard the provider's 2xx) or parked with its
    # reason, not both.
    delivered = {s.tag for s in sends if s.accepted and not caught(s)}
    assert delivered | refused == set(tags), sorted(set(tags) - delivered - refused)
    assert not delivered & refused, delivered & refused
    # Left behind: a COMPLETED record for each message delivered, and an ambiguous-send marker
    # for each record the kill left INPROGRESS (the redelivery read it, whether the copy was
    # then accepted or refused); the refusals deleted their records.
    markers = len(in_progress)
    assert sorted(statuses(records(dynamodb, made.table))) == sorted(
        ["COMPLETED"] * (MESSAGES - len(refused)) + ["AMBIGUOUS"] * markers
    )
    assert queue_counts(sqs, made.queue_url) == dict.fromkeys(QUEUE_COUNTS, 0)
    assert queue_counts(sqs, made.dlq_url) == dict.fromkeys(QUEUE_COUNTS, 0)

    counts = {
        "provider answers the second copy": "refused (422)" if refused else "accepted (201)",
        "messages in the killed receive": MESSAGES,
        "sends completed and recorded before the kill": sum(heard(s) for s in before),
        "sends in flight at the kill (ambiguous: possibly delivered)": len(in_flight),
        "records the kill left INPROGRESS": len(in_progress),
        "sent by the restarted worker, after the visibility timeout": len(
            {s.tag for s in redelivered}
        ),
        "first send after the kill, seconds after the killed receive": round(back_after, 1),
        "visibility timeout, seconds": VISIBILITY_S,
        "delivered once": len(delivered - ambiguous),
        "delivered twice (in flight at the kill, the copy accepted)": len(delivered & ambiguous),
        "parked (in flight at the kill, the copy refused)": len(parked),
        "parked with PossiblyDelivered (flagged)": flagged,
        "ambiguous-send markers left": markers,
        "duplicate sends": len(sends) - MESSAGES,
        "duplicates not in flight at the kill": 0,  # asserted per message above
        "most sends of one message": max(sum(s.tag == tag for s in sends) for tag in tags),
        "lost": len(set(tags) - delivered - refused),
        "provider requests in all": len(sends),
        "seconds": round(time.monotonic() - began, 1),
    }
    crash_report[scenario] = counts
    print(f"\ncrash recovery, {scenario}: what happened")
    for name, count in counts.items():
        print(f"  {name:<62} {count}")


def take_dead_letters(sqs: Any, url: str, count: int) -> list[dict[str, Any]]:
    """Receive and delete up to ``count`` dead letters, with their attributes."""
    found: list[dict[str, Any]] = []
    for _ in range(10):  # SQS may answer a receive with fewer than are there
        if len(found) >= count:
            break
        for letter in sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", []):
            found.append(letter)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=letter["ReceiptHandle"])
    return found
