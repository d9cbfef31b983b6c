"""Fault injection at volume: the whole local stack, random provider faults, every message traced.

    python -m tests.reliability.harness --messages 50000 --seed 7     # make soak

Messages go in through both entry points (SQS producers; the webhook, queued and synchronous)
while the sandbox providers answer with faults drawn from a seeded RNG. Each message carries a
tag in its text, so the providers' request logs say how often each one arrived. At the end
every message must be in exactly one state: delivered once, in the dead-letter queue with its
reason, or refused to its (synchronous) caller with a final answer. A duplicate is allowed
only where the provider received a request whose answer never came back (ambiguous).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
import urllib3

from relay_local.sandbox import Fault
from relay_local.stack import DEV_API_KEY, DevStack

TAG = re.compile(r"rel-\d{7}")

# Fault mix per provider request: (name, weight, fault). None = a normal answer.
FAULTS: list[tuple[str, float, Fault | None]] = [
    ("ok", 70, None),
    ("5xx", 5, Fault.status(503)),
    ("429 Retry-After", 3, Fault.status(429, retry_after="1")),
    ("reset before read", 3, Fault.reset_before_read()),
    ("reset after read", 2, Fault.reset_after_read()),
    ("hang past timeout", 2, Fault.hang(1.2)),
    ("slow answer", 5, Fault.slow(0.1)),
    ("malformed body", 3, Fault.garbage_body()),
    ("permanent 4xx", 2, None),  # the provider's own documented refusal, built per provider
]
PERMANENT = {
    "lancepilot": Fault.status(
        422, {"message": "Validation error", "errors": {"number": ["is not on WhatsApp"]}}
    ),
    "fluents": Fault.status(
        400, {"message": "to_number is invalid", "error": "Bad Request", "statusCode": 400}
    ),
}
# Fast settings, so that thousands of messages and their faults fit in a minute or two.
SPEED = {
    "HTTP_CONNECT_TIMEOUT": "0.5",
    # Wide against the slow answers (0.1 s): a normal answer must not time out on a busy machine.
    "HTTP_READ_TIMEOUT": "1.0",
    "SEND_BUDGET_SECONDS": "5",
    "BACKOFF_BASE_SECONDS": "0.01",
    "BACKOFF_MAX_SECONDS": "0.05",
    "REDELIVERY_BASE_SECONDS": "1",
    "REDELIVERY_MAX_SECONDS": "2",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_METRICS_DISABLED": "true",  # thousands of EMF lines would only be noise here
}
BACKLOG_LIMIT = 400  # messages waiting in the delivery queue before producers hold back


@dataclass
class Report:
    messages: int
    seed: int
    entry: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    dead_letter_kinds: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    unexplained_duplicates: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # requests that broke a provider spec
    lost: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        rows = [("messages sent", self.messages)]
        rows += [(f"  via {k}", v) for k, v in sorted(self.entry.items())]
        rows += [(f"fault injected: {k}", v) for k, v in sorted(self.faults.items())]
        rows += [(f"ended: {k}", v) for k, v in sorted(self.states.items())]
        rows += [(f"  dead-lettered as {k}", v) for k, v in sorted(self.dead_letter_kinds.items())]
        rows += [(f"  refused to the caller: {k}", v) for k, v in sorted(self.refused.items())]
        rows += [
            ("duplicate sends (requests the provider may have kept twice)", self.duplicates),
            ("duplicates not explained by an ambiguous send", len(self.unexplained_duplicates)),
            ("requests that broke a provider's spec", len(self.violations)),
            ("lost", len(self.lost)),
            ("seconds", round(self.seconds, 1)),
        ]
        return "\n".join(f"| {name} | {value} |" for name, value in rows)


def run(messages: int, seed: int, environments: int = 4) -> Report:
    """Push ``messages`` through the local stack under seeded faults; account for each one."""
    rng = random.Random(seed)
    report = Report(messages, seed)
    saved = dict(os.environ)
    started = time.monotonic()
    stack = DevStack(
        port=0,
        moto_port=0,
        sandbox_ports=(0, 0),
        environments=environments,
        environ={},
        extra_env=SPEED,
    )
    try:
        stack.start()
        _inject(stack, rng, report)
        plan = _plan(messages, rng, report)
        sync_answers = _send(stack, plan)
        _wait_until_drained(stack, limit_s=300 + messages * 0.2)
        _account(stack, plan, sync_answers, report)
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)
    report.seconds = time.monotonic() - started
    return report


def _inject(stack: DevStack, rng: random.Random, report: Report) -> None:
    lock = threading.Lock()
    names = [name for name, _, _ in FAULTS]
    weights = [weight for _, weight, _ in FAULTS]
    faults = {name: fault for name, _, fault in FAULTS}
    for provider, sandbox in stack.sandboxes.items():

        def choose(provider: str = provider) -> Fault | None:
            with lock:
                name = rng.choices(names, weights)[0]
                report.faults[name] += 1
            return PERMANENT[provider] if name == "permanent 4xx" else faults[name]

        sandbox.set_chooser(choose)


def _plan(messages: int, rng: random.Random, report: Report) -> list[dict[str, Any]]:
    plan = []
    for i in range(messages):
        tag = f"rel-{i:07d}"
        entry = rng.choices(["sqs", "http async", "http sync"], [40, 30, 30])[0]
        provider = rng.choice(["lancepilot", "fluents"])
        body: dict[str, Any] = {
            "provider": provider,
            "to": "+14155550123",
            "text": f"Order {tag} has shipped",
        }
        if entry == "sqs" and rng.random() < 0.02:
            body.pop("to")  # a producer's broken message: must be parked as invalid
        report.entry[entry] += 1
        plan.append({"tag": tag, "entry": entry, "body": body})
    return plan


class _Backlog:
    """Hold producers back while the delivery queue is deep.

    moto's queue scans every message on each receive, so a queue filled all at once makes the
    run quadratic; a real queue does not care, and the relay sees the same traffic either way.
    """

    def __init__(self, stack: DevStack, limit: int = BACKLOG_LIMIT) -> None:
        self._sqs = boto3.client("sqs")
        self._url = stack.env["DELIVERY_QUEUE_URL"]
        self._limit = limit
        self._lock = threading.Lock()
        self._depth, self._checked = 0, 0.0

    def wait_for_room(self) -> None:
        while True:
            with self._lock:
                if time.monotonic() - self._checked > 0.5:
                    self._depth = int(
                        self._sqs.get_queue_attributes(
                            QueueUrl=self._url, AttributeNames=["ApproximateNumberOfMessages"]
                        )["Attributes"]["ApproximateNumberOfMessages"]
                    )
                    self._checked = time.monotonic()
                if self._depth < self._limit:
                    return
            time.sleep(0.25)


def _send(stack: DevStack, plan: list[dict[str, Any]]) -> dict[str, int]:
    backlog = _Backlog(stack)
    queue_url = stack.env["DELIVERY_QUEUE_URL"]

    def produce(batch: list[dict[str, Any]]) -> None:
        sqs = boto3.client("sqs")
        for start in range(0, len(batch), 10):
            backlog.wait_for_room()
            sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(n), "MessageBody": json.dumps(p["body"])}
                    for n, p in enumerate(batch[start : start + 10])
                ],
            )

    producer = threading.Thread(target=produce, args=([p for p in plan if p["entry"] == "sqs"],))
    producer.start()
    http = urllib3.PoolManager(maxsize=16, retries=False, timeout=30)
    answers: dict[str, int] = {}

    def post(item: dict[str, Any]) -> None:
        headers = {
            "Authorization": f"Bearer {DEV_API_KEY}",
            "Content-Type": "application/json",
            "Idempotency-Key": item["tag"],
        }
        if item["entry"] == "http async":
            headers["Prefer"] = "respond-async"
            backlog.wait_for_room()
        # A well-behaved client: the same key again after 503, 504 or 409, until final.
        for attempt in range(10):
            answer = http.request(
                "POST",
                f"{stack.url}/v1/messages",
                body=json.dumps(item["body"]).encode(),
                headers=headers,
            )
            if answer.status not in (409, 503, 504):
                break
            time.sleep(0.05 * (attempt + 1))
        answers[item["tag"]] = answer.status

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(post, [p for p in plan if p["entry"] != "sqs"]))
    producer.join()
    return answers


def _wait_until_drained(stack: DevStack, limit_s: float) -> None:
    sqs = boto3.client("sqs")
    deadline, quiet_since = time.monotonic() + limit_s, None
    while time.monotonic() < deadline:
        counts = sqs.get_queue_attributes(
            QueueUrl=stack.env["DELIVERY_QUEUE_URL"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if sum(int(v) for v in counts.values()) == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2:
                return
        else:
            quiet_since = None
        time.sleep(0.25)
    raise TimeoutError("the delivery queue did not drain")


def _account(
    stack: DevStack, plan: list[dict[str, Any]], sync_answers: dict[str, int], report: Report
) -> None:
    """Put each message in its end state, strictly.

    - delivered: the provider answered 2xx at least once (a request it received but never
      answered does not count as a delivery);
    - a duplicate is any further request the provider may have kept; it is explained only if it
      came before the first 2xx and followed a request that got no answer (ambiguous); anything
      arriving after a 2xx is unexplained;
    - dead-lettered: exactly one dead letter, and no 2xx for it;
    - refused: a synchronous caller's final 502, after the provider refused it with a 4xx;
    - anything else (including a caller left with 503/504/409) is lost.
    """
    arrived: dict[str, list[int | None]] = defaultdict(list)  # tag -> answers, in order
    for sandbox in stack.sandboxes.values():
        report.violations += sandbox.violations()
        for received in sorted(sandbox.received, key=lambda r: r.at):
            match = TAG.search(json.dumps(received.json))
            if match:
                arrived[match.group()].append(received.answered)
    parked = _dead_letters(stack)
    for item in plan:
        tag = item["tag"]
        answers = arrived.get(tag, [])
        first_ok = next((i for i, a in enumerate(answers) if a is not None and a < 300), None)
        kept = [a for a in answers if a is None or a < 300]  # what the provider may have kept
        if len(kept) > 1:
            report.duplicates += len(kept) - 1
            after_ok = answers[first_ok + 1 :] if first_ok is not None else []
            if any(a is None or a < 300 for a in after_ok):
                report.unexplained_duplicates.append(tag)
        kinds = parked.get(tag, [])
        if len(kinds) > 1 or (kinds and first_ok is not None):
            report.lost.append(tag)  # parked twice, or parked although delivered: both wrong
        elif kinds:
            report.states["dead-lettered with its reason"] += 1
            report.dead_letter_kinds[kinds[0]] += 1
        elif first_ok is not None:
            once = len(kept) == 1
            report.states["delivered once" if once else "delivered, plus ambiguous resends"] += 1
        elif sync_answers.get(tag) == 502 and any(
            a is not None and 400 <= a < 500 for a in answers
        ):
            report.states["refused to the caller with the provider's reason"] += 1
            report.refused[str(sync_answers[tag])] += 1
        else:
            report.lost.append(tag)


def _dead_letters(stack: DevStack) -> dict[str, list[str]]:
    sqs = boto3.client("sqs")
    found: dict[str, list[str]] = defaultdict(list)
    while batch := sqs.receive_message(
        QueueUrl=stack.env["DEAD_LETTER_QUEUE_URL"],
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        VisibilityTimeout=600,
    ).get("Messages", []):
        for message in batch:
            match = TAG.search(message["Body"])
            kind = message["MessageAttributes"]["ErrorKind"]["StringValue"]
            if match:
                found[match.group()].append(kind)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--environments", type=int, default=4)
    args = parser.parse_args()
    report = run(args.messages, args.seed, args.environments)
    print("| what | count |\n| --- | --- |\n" + report.table())
    if report.lost or report.unexplained_duplicates or report.violations:
        raise SystemExit(
            f"FAILED: lost {report.lost[:10]}, "
            f"unexplained duplicates {report.unexplained_duplicates[:10]}"
        )


if __name__ == "__main__":
    main()
