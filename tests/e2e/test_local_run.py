"""`make run`'s stack over real HTTP: the relay, moto_server and the sandbox providers together."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time

import pytest
import urllib3

from relay.auth import sign
from relay_local.stack import DEV_API_KEY, DEV_SIGNING_SECRET
from tests.conftest import REPO
from tests.e2e import local_stack

pytestmark = pytest.mark.slow


class Running:
    def __init__(self, url: str, lines: queue.Queue[str], moto_port: int) -> None:
        self.url = url
        self.moto_port = moto_port
        self.lines = lines
        self.http = urllib3.PoolManager(retries=False, timeout=10)

    def post(self, body: bytes, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        return self.http.request("POST", f"{self.url}/v1/messages", body=body, headers=headers)

    def sandbox_line(self, timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if "sandbox <-" in line:
                return line
        raise AssertionError("no sandbox provider received a request")

    def lines_with(self, marker: str, until: str, timeout: float = 5) -> list[str]:
        """Output lines holding ``marker``, read until one also holds ``until``."""
        found, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if marker in line:
                found.append(line)
                if until in line:
                    return found
        raise AssertionError(f"no {until!r} line; saw {found}")

    def drain(self) -> None:
        while not self.lines.empty():
            self.lines.get_nowait()


@pytest.fixture(scope="module")
def local_relay():
    """`python -m relay_local`, as `make run` starts it, on ports it picks itself."""
    relay = local_stack.start()
    yield Running(relay.url, relay.lines, relay.moto_port)
    relay.stop()


def test_the_readme_curl_is_delivered_by_the_sandbox(local_relay):
    local_relay.drain()
    # The README's curl, byte for byte in what it sends.
    body = b'{"provider": "fluents", "to": "+14155550123", "text": "Hello from webhook-relay"}'

    answer = local_relay.post(
        body, {"Authorization": f"Bearer {DEV_API_KEY}", "Content-Type": "application/json"}
    )

    assert answer.status == 201, answer.data
    assert answer.json()["status"] == "delivered"
    line = local_relay.sandbox_line()
    assert "POST /v1/messages" in line
    assert '"to_number": "+14155550123"' in line
    assert line.rstrip().endswith("[201] ok")
    # make run shows each metric line readably; the cold start metric follows the outcomes.
    metrics = local_relay.lines_with("  metric  ", until="ColdStart=1")
    assert any("MessagesDelivered=1" in m and "[Provider=fluents]" in m for m in metrics)
    [cold] = [m for m in metrics if "ColdStart=1" in m]
    assert "function_name=" in cold
    assert "service=webhook-relay" in cold


def test_a_signed_lancepilot_message_is_delivered(local_relay):
    local_relay.drain()
    body = json.dumps({"provider": "lancepilot", "to": "+4915123456789", "text": "Hallo"}).encode()
    ts = int(time.time())

    answer = local_relay.post(
        body,
        {
            "Content-Type": "application/json",
            "webhook-id": "msg_local_1",
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(DEV_SIGNING_SECRET, "msg_local_1", ts, body),
        },
    )

    assert answer.status == 201, answer.data
    assert "/contacts/number/4915123456789/messages/text" in local_relay.sandbox_line()


def test_refusals_come_back_over_http(local_relay):
    auth = {"Authorization": f"Bearer {DEV_API_KEY}", "Content-Type": "application/json"}

    assert local_relay.post(b"{}", {"Content-Type": "application/json"}).status == 401
    invalid = local_relay.post(b'{"provider": "sms", "to": "x"}', auth)
    assert invalid.status == 422
    assert set(invalid.json()["errors"]) == {"provider", "to", "text"}
    other = local_relay.http.request("GET", f"{local_relay.url}/v1/messages")
    assert other.status == 404


def test_a_queued_message_is_delivered_by_the_local_delivery_function(local_relay):
    local_relay.drain()
    body = b'{"provider": "fluents", "to": "+14155550123", "text": "Queued hello"}'

    answer = local_relay.post(
        body,
        {
            "Authorization": f"Bearer {DEV_API_KEY}",
            "Content-Type": "application/json",
            "Prefer": "respond-async",
        },
    )

    assert answer.status == 202, answer.data
    assert answer.json()["status"] == "queued"
    line = local_relay.sandbox_line(timeout=10)  # the poller picks it up and delivers it
    assert '"message": "Queued hello"' in line
    assert line.rstrip().endswith("[201] ok")


def test_a_producer_message_on_the_queue_is_delivered(local_relay):
    local_relay.drain()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay_local.send",
            "--moto-port",
            str(local_relay.moto_port),
            '{"provider": "lancepilot", "to": "+14155550123", "text": "From a producer"}',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    assert result.stdout.startswith("queued ")
    assert '{"text": {"body": "From a producer"}}' in local_relay.sandbox_line(timeout=10)
