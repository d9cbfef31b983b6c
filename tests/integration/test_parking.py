"""A dead-letter send answered late is sent again, and SQS keeps both: two identical letters,
which a redrive and the reliability harness recognise as one (docs/sqs.md). Against an SQS
endpoint on 127.0.0.1 that stores every send and answers the first only once the retry is in
(the real boundary: the relay's botocore client over HTTP)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from relay.queues import Queues, park_reason

if TYPE_CHECKING:
    from collections.abc import Iterator


class LateSqs(ThreadingHTTPServer):
    """Stores each SendMessage as it arrives, as SQS does; holds the first one's answer until
    a second send arrives, so the client's read timeout runs out on it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SqsHandler)
        self.stored: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.retried = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _SqsHandler(BaseHTTPRequestHandler):
    server: LateSqs

    def do_POST(self) -> None:
        assert self.headers["X-Amz-Target"] == "AmazonSQS.SendMessage"
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.stored.append(request)
            count = len(self.server.stored)
        if count == 1:
            self.server.retried.wait(timeout=10)
        else:
            self.server.retried.set()
        answer = json.dumps({"MessageId": f"m-{count}"}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        except OSError:  # the client stopped waiting for the first answer
            pass

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def late_sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[LateSqs]:
    server = LateSqs()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", server.url)
    yield server
    server.retried.set()
    server.shutdown()
    server.server_close()


def test_a_late_dead_letter_send_leaves_two_identical_letters(late_sqs: LateSqs) -> None:
    queues = Queues(boto3.session.Session(region_name="eu-west-1"), None, f"{late_sqs.url}/dlq")
    reason = park_reason("permanent", 422, "refused", "r-1", "k-1", possibly_delivered=False)

    letter_id = queues.dead_letter('{"to": "+14155550123"}', reason, {})

    # Parked, as far as the relay knows: the message is deleted, not sent or parked again.
    assert letter_id == "m-2"
    first, second = late_sqs.stored
    assert first == second  # the same body, RelayId and reason: a copy, not a second parking
    assert first["MessageAttributes"]["RelayId"] == {"DataType": "String", "StringValue": "r-1"}
    assert first["MessageAttributes"]["ErrorKind"]["StringValue"] == "permanent"
