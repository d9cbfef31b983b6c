"""X-Ray as deployed: each invocation's subsegments reach the daemon under its own trace.

The relay replaces the X-Ray SDK's Lambda context with one that parses the trace header once
per invocation (relay.observability). Each handler runs here as on Lambda, in a fresh
interpreter with tracing on and LAMBDA_TASK_ROOT set, moto in-process, the provider stand-ins
over loopback and a UDP socket of the test's as the X-Ray daemon; every document the SDK sent
is then read back: the right trace, the right parent, nothing missing.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from tests.conftest import REPO, TOKENS, load_event

if TYPE_CHECKING:
    from collections.abc import Iterator

_INVOKE = """
import json, os, sys
from moto import mock_aws
from relay_local import resources
from relay_local.lambda_runtime import LambdaContext, load_function
spec = json.loads(sys.argv[1])
with mock_aws():
    made = resources.create(spec["tokens"], {"api_keys": ["local-dev-key"], "signing_secrets": []})
    os.environ.update(IDEMPOTENCY_TABLE=made.table, DELIVERY_QUEUE_URL=made.queue_url,
                      DEAD_LETTER_QUEUE_URL=made.dlq_url)
    os.environ.pop("_X_AMZN_TRACE_ID", None)  # Lambda sets none during init
    functions = {name: load_function(name).lambda_handler for name in ("webhook", "delivery")}
    from aws_xray_sdk.core import xray_recorder
    from aws_xray_sdk.core.models.trace_header import TraceHeader
    parse, parses = TraceHeader.from_header_str, []
    def counted(header):  # the SDK's own parse, counted
        parses[-1] += 1
        return parse(header)
    TraceHeader.from_header_str = counted
    answers = []
    for function, header, event in spec["invocations"]:
        os.environ["_X_AMZN_TRACE_ID"] = header  # as Lambda sets it before each invocation
        parses.append(0)
        answers.append(functions[function](event, LambdaContext()))
    context = type(xray_recorder.context).__name__
    print(json.dumps({"answers": answers, "context": context, "parses": parses}))
"""


def header(number: int) -> tuple[str, str, str]:
    root, parent = f"1-67890abc-{number:024x}", f"{number:016x}"
    return f"Root={root};Parent={parent};Sampled=1", root, parent


class Daemon:
    """A UDP socket where the X-Ray daemon would listen, read by a thread as datagrams come."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.datagrams: list[bytes] = []
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                self.datagrams.append(self.sock.recv(65536))
            except TimeoutError:
                continue

    def documents(self) -> list[dict[str, Any]]:
        """Every segment document received: a JSON header line, then the document."""
        self._done.set()
        self._reader.join()
        self.sock.setblocking(False)  # what the socket still holds: sent before the exit
        while True:
            try:
                self.datagrams.append(self.sock.recv(65536))
            except BlockingIOError:
                break
        self.sock.close()
        found = []
        for datagram in self.datagrams:
            head, _, body = datagram.decode().partition("\n")
            assert json.loads(head) == {"format": "json", "version": 1}
            found.append(json.loads(body))
        return found


def flatten(document: dict[str, Any], parent_id: str | None = None) -> Iterator[dict[str, Any]]:
    """A streamed subsegment and the ones nested in it, each with its parent's id."""
    yield {**document, "parent_id": document.get("parent_id", parent_id)}
    for child in document.get("subsegments", []):
        yield from flatten({**child, "trace_id": document["trace_id"]}, document["id"])


def another_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The same messages as new SQS messages, under new idempotency keys: sent again."""
    batch = copy.deepcopy(batch)
    for record in batch["Records"]:
        record["messageId"] = str(uuid.uuid4())
        body = json.loads(record["body"])
        if "idempotency_key" in body:
            body["idempotency_key"] += "-again"
        record["body"] = json.dumps(body)
        record.get("messageAttributes", {}).pop("RelayId", None)
    return batch


def test_each_invocation_traces_to_its_own_trace(relay_env):
    daemon = Daemon()
    paths = [str(REPO / "layers" / "relay"), str(REPO / "local")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("POWERTOOLS_TRACE_DISABLED")  # Tracing: Active, as the template deploys it
    env["LAMBDA_TASK_ROOT"] = str(REPO / "functions")  # the SDK's sign that it is in Lambda
    env["AWS_XRAY_DAEMON_ADDRESS"] = daemon.address
    traces = [header(n) for n in (1, 2, 3, 4)]
    batch = load_event("sqs_mixed_batch.json")
    posts = [load_event("http_post_lancepilot.json"), load_event("http_post_fluents.json")]
    for number, post in enumerate(posts):  # keyed: the idempotency record's two writes
        post["headers"]["idempotency-key"] = f"trace-test-{number}"
    invocations = [
        ["webhook", traces[0][0], posts[0]],
        ["webhook", traces[1][0], posts[1]],
        ["delivery", traces[2][0], batch],  # its sends run on the batch's lane threads
        ["delivery", traces[3][0], another_batch(batch)],  # on the same threads, kept warm
    ]
    done = subprocess.run(
        [sys.executable, "-c", _INVOKE, json.dumps({"tokens": TOKENS, "invocations": invocations})],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["context"] == "HeaderOnceContext"
    answers = result["answers"]
    assert [answer["statusCode"] for answer in answers[:2]] == [201, 201]
    # Parsed once per thread that traces in an invocation, not on each lookup (26 a message):
    # the webhook's one thread; a batch's handler thread and each lane thread that sends.
    assert result["parses"][:2] == [1, 1]
    assert all(1 <= parses <= 5 for parses in result["parses"][2:]), result["parses"]

    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for document in daemon.documents():
        for entity in flatten(document):
            by_trace[entity["trace_id"]].append(entity)
    assert set(by_trace) == {root for _, root, _ in traces}  # no stray or mixed-up trace

    for (_, root, parent), provider in zip(traces[:2], ["lancepilot", "fluents"], strict=True):
        entities = by_trace[root]
        names = Counter(entity["name"] for entity in entities)
        secrets = 2 if root == traces[0][1] else 0  # read once, at the first invocation
        expected = {"## lambda_handler": 1, "dynamodb": 2, f"## {provider} send": 1}
        assert names == Counter(expected, secretsmanager=secrets)
        handler = next(entity for entity in entities if entity["name"] == "## lambda_handler")
        assert handler["parent_id"] == parent  # under Lambda's own segment for the invocation
        assert handler["annotations"]["ColdStart"] is (root == traces[0][1])
        assert {entity["parent_id"] for entity in entities if entity is not handler} == {
            handler["id"]
        }
        assert all(not entity.get("in_progress") for entity in entities)

    # Each batch: one Lancepilot and one Fluents message, and one invalid (dead-lettered unsent).
    for (_, root, parent), answer in zip(traces[2:], answers[2:], strict=True):
        assert answer == {"batchItemFailures": []}
        sends = [entity for entity in by_trace[root] if entity["name"].endswith(" send")]
        assert sorted(e["name"] for e in sends) == ["## fluents send", "## lancepilot send"]
        # From the lane threads, each of which found the invocation's trace itself.
        assert {entity["parent_id"] for entity in sends} == {parent}
