"""A dead-letter send is never retried blindly: SQS may have stored one whose answer came late,
and a retry would park the message twice. Against an SQS endpoint on 127.0.0.1 that answers
its first request too late (the real boundary: the relay's botocore client over HTTP)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from relay.queues import Queues, park_reason
from relay.secrets import FAST_FAIL, ONE_ATTEMPT

if TYPE_CHECKING:
    from collections.abc import Iterator

LATE = 0.5  # seconds the endpoint takes over its first answer
READ_TIMEOUT = 0.2  # the clients' read timeout in these tests: shorter than LATE


class SlowSqs(ThreadingHTTPServer):
    """Stores every SendMessage it is sent (as SQS does, answered or not) and answers the first
    one only after ``LATE`` seconds."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SqsHandler)
        self.stored: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _SqsHandler(BaseHTTPRequestHandler):
    server: SlowSqs

    def do_POST(self) -> None:
        assert self.headers["X-Amz-Target"] == "AmazonSQS.SendMessage"
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.stored.append(request)
            first = len(self.server.stored) == 1
        if first:
            time.sleep(LATE)
        answer = json.dumps({"MessageId": f"m-{len(self.server.stored)}"}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        except OSError:  # the client gave up waiting
            pass

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def slow_sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowSqs]:
    server = SlowSqs()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", server.url)
    yield server
    server.shutdown()
    server.server_close()


def queues(parking: Config) -> Queues:
    session = boto3.session.Session(region_name="eu-west-1")
    return Queues(session, None, "http://127.0.0.1/000000000000/dlq", parking=parking)


def park(target: Queues) -> None:
    reason = park_reason("permanent", 422, "refused", "r-1", "k-1", possibly_delivered=False)
    target.dead_letter('{"to": "+14155550123"}', reason, {})


def test_a_late_dead_letter_send_fails_without_a_second_copy(slow_sqs: SlowSqs) -> None:
    with pytest.raises(BotoCoreError):  # the caller hands the message back or answers 504
        park(queues(ONE_ATTEMPT.merge(Config(read_timeout=READ_TIMEOUT))))

    time.sleep(LATE)  # a retry, had there been one, would have arrived by now
    [stored] = slow_sqs.stored
    assert stored["MessageAttributes"]["RelayId"] == {"DataType": "String", "StringValue": "r-1"}
    assert stored["MessageAttributes"]["ErrorKind"]["StringValue"] == "permanent"


def test_what_the_parking_client_prevents(slow_sqs: SlowSqs) -> None:
    # The relay's other AWS calls retry once (FAST_FAIL): a dead-letter send made so is stored
    # twice when its first answer is late, though the caller sees one success.
    park(queues(FAST_FAIL.merge(Config(read_timeout=READ_TIMEOUT))))

    first, second = slow_sqs.stored
    assert first == second
