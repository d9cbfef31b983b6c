"""The installed `relay` console script as a process, killed outright mid-redrive.

test_dlq_tool.py drives ``main()`` in-process, where an "interrupt" is an exception and the
tool's cleanup still runs. Here the real script talks HTTP to moto_server (sharing the ``aws``
fixture's moto state) and gets SIGKILL: no cleanup, no summary, messages left held.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer
from moto.sqs.models import SQSBackend

from tests.conftest import lancepilot_message
from tests.integration.test_dlq_tool import hidden, park, visible

pytestmark = pytest.mark.slow

RELAY = Path(sys.executable).with_name("relay")  # [project.scripts], beside the interpreter
LETTERS = 25  # three receives of up to ten: one moved, one in flight at the kill, one unread
HOLD_S = 2  # --max-hold: how long the killed run's batch stays hidden
WAIT_S = 15  # for any one step, so that a broken run fails rather than hangs


class Gate:
    """moto's SQS backend, watched: the RelayIds of every send to the delivery queue, and the
    ``hold``-th DeleteMessageBatch on the DLQ held, never done, until ``open``.

    Held in the server, after the tool's send was answered: the process is then stuck between
    its send and its delete, the moment a kill does most harm.
    """

    def __init__(self, queue: str, dlq: str, hold: int) -> None:
        self.sends: list[list[str]] = []
        self.reached = threading.Event()
        self._open = threading.Event()
        self._queue, self._dlq, self._hold, self._deletes = queue, dlq, hold, 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        send, delete = SQSBackend.send_message_batch, SQSBackend.delete_message_batch

        def sending(backend, queue_name, entries):
            if queue_name == self._queue:
                relay_ids = [
                    e["MessageAttributes"]["RelayId"]["StringValue"] for e in entries.values()
                ]
                self.sends.append(relay_ids)
            return send(backend, queue_name, entries)

        def deleting(backend, queue_name, receipts):
            if queue_name == self._dlq:
                self._deletes += 1
                if self._deletes == self._hold:
                    self.reached.set()
                    self._open.wait(WAIT_S)
                    return [], []  # its caller is dead: nothing deleted, nobody told
            return delete(backend, queue_name, receipts)

        monkeypatch.setattr(SQSBackend, "send_message_batch", sending)
        monkeypatch.setattr(SQSBackend, "delete_message_batch", deleting)

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def endpoint(aws):
    """moto_server on a free port, serving the ``aws`` fixture's queues and table."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def redrive(aws, endpoint: str) -> subprocess.Popen[str]:
    """``relay dlq redrive --all`` as an operator runs it, against moto_server."""
    assert RELAY.exists(), f"{RELAY} is not installed: make setup"
    where = ["--endpoint-url", endpoint, "--dlq-url", aws.dlq_url, "--queue-url", aws.queue_url]
    return subprocess.Popen(
        [
            str(RELAY),
            "dlq",
            "redrive",
            "--all",
            "--yes",
            "--quiet",
            "--max-hold",
            str(HOLD_S),
            *where,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_redrive_loses_nothing_and_its_rerun_delivers_nothing_twice(
    aws, endpoint, delivery, lancepilot, monkeypatch
):
    relay_ids = sorted(f"relay-{n:02d}" for n in range(LETTERS))
    for relay_id in relay_ids:
        park(aws, lancepilot_message(text=relay_id), "exhausted", 503, relay_id=relay_id)
    gate = Gate(aws.queue_url.rsplit("/", 1)[1], aws.dlq_url.rsplit("/", 1)[1], hold=2)
    gate.install(monkeypatch)

    # SIGKILL once the second batch is on the delivery queue and its delete has not happened.
    killed = redrive(aws, endpoint)
    try:
        assert gate.reached.wait(WAIT_S), "the redrive never reached its second delete"
    finally:
        killed.send_signal(signal.SIGKILL)
        _, err = killed.communicate(timeout=WAIT_S)
        gate.open()
    assert killed.returncode == -signal.SIGKILL
    assert f"if it is killed, they reappear on the DLQ within {HOLD_S} s" in err
    first, in_flight = gate.sends
    assert (len(first), len(in_flight)) == (10, 10)
    # None lost: the held batch is hidden or, if the hold already ran out here, back.
    assert visible(aws, aws.dlq_url) + hidden(aws, aws.dlq_url) == 15
    assert visible(aws, aws.queue_url) == 20

    # The delivery function goes on meanwhile: both batches are delivered and recorded.
    delivery.drain()
    assert len(lancepilot.accepted()) == 20

    # As the tool said: the killed run's batch is back on the DLQ within the hold.
    deadline = time.monotonic() + HOLD_S + WAIT_S
    while visible(aws, aws.dlq_url) < 15:
        assert time.monotonic() < deadline, "the killed run's messages never came back"
        time.sleep(0.1)

    rerun = redrive(aws, endpoint)
    out, err = rerun.communicate(timeout=WAIT_S)

    assert rerun.returncode == 0, err
    assert "moved 15, skipped 0" in out
    rerun_sent = [relay_id for batch in gate.sends[2:] for relay_id in batch]
    # The rerun sends what is still on the DLQ, each once: not the batch the killed run moved.
    assert sorted(rerun_sent) == sorted(set(relay_ids) - set(first))
    # So every one reached the delivery queue, and only the batch caught between its send and
    # its delete reached it twice.
    assert sorted(first + in_flight + rerun_sent) == sorted(relay_ids + in_flight)
    assert visible(aws, aws.dlq_url) == hidden(aws, aws.dlq_url) == 0

    # The second copies carry the RelayId their first was delivered under: not sent again.
    delivery.drain()
    texts = sorted(r.json["text"]["body"] for r in lancepilot.received)
    assert texts == relay_ids  # every one, once
    assert visible(aws, aws.queue_url) == hidden(aws, aws.queue_url) == 0
