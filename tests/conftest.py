"""Shared fixtures: fake AWS (moto), spec-checking provider stand-ins, handlers loaded from disk."""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relay_local import moto_server, resources
from relay_local.esm import EventSourceMapping, event_record
from relay_local.lambda_runtime import LambdaContext, load_function
from relay_local.sandbox import ProviderSandbox

# In-process moto as the local stack's moto_server runs it: SQS calls and DynamoDB writes one
# at a time, so a conditional write excludes as DynamoDB's does when a batch's threads race.
moto_server.install()

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"

API_KEY = "test-api-key-7f3a9c"
SECOND_API_KEY = "test-api-key-rotated-51be"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"test-signing-secret-0123456789ab").decode()
SECOND_SIGNING_SECRET = "whsec_" + base64.b64encode(b"rotated-signing-secret-abcdefgh").decode()
TOKENS = {"lancepilot": "lp-test-token-1c2d", "fluents": "fl-test-token-9e8f"}
WORKSPACE = "3f0c6a52-8a1e-4d5b-9c61-2b7e0f4d9a10"
TOKENS_SECRET = "webhook-relay/provider-tokens"
AUTH_SECRET = "webhook-relay/auth"


def pytest_configure(config: pytest.Config) -> None:
    """With ``RELAY_HYPOTHESIS_REPORT=<path>`` (``make reliability``), write each Hypothesis
    test's counts there as JSON (tests/property/hypothesis_report.py); inert without it."""
    if os.environ.get("RELAY_HYPOTHESIS_REPORT"):
        from tests.property.hypothesis_report import register

        register(config)


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def received_records(aws: Any, count: int) -> list[dict[str, Any]]:
    """Receive ``count`` messages from the delivery queue, shaped as the event source would."""
    arn = aws.sqs.get_queue_attributes(QueueUrl=aws.queue_url, AttributeNames=["QueueArn"])
    records: list[dict[str, Any]] = []
    while len(records) < count:
        for message in aws.sqs.receive_message(
            QueueUrl=aws.queue_url,
            MaxNumberOfMessages=min(10, count - len(records)),
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", []):
            records.append(event_record(message, arn["Attributes"]["QueueArn"]))
    return records


@pytest.fixture(autouse=True)
def _isolated_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach real AWS, whatever the developer's shell has set."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "webhook-relay")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")


@pytest.fixture(scope="session")
def sandboxes() -> Any:
    with (
        ProviderSandbox("lancepilot", token=TOKENS["lancepilot"]) as lancepilot,
        ProviderSandbox("fluents", token=TOKENS["fluents"]) as fluents,
    ):
        yield {"lancepilot": lancepilot, "fluents": fluents}


def _sandbox(sandboxes: dict[str, ProviderSandbox], name: str) -> Any:
    sandbox = sandboxes[name]
    sandbox.reset()
    yield sandbox
    # Whatever the relay sent must have matched the provider's document.
    assert sandbox.violations() == []


@pytest.fixture
def lancepilot(sandboxes: dict[str, ProviderSandbox]) -> Any:
    yield from _sandbox(sandboxes, "lancepilot")


@pytest.fixture
def fluents(sandboxes: dict[str, ProviderSandbox]) -> Any:
    yield from _sandbox(sandboxes, "fluents")


@dataclass
class Aws:
    """moto's clients and the stack's resources in it."""

    secrets: Any
    sqs: Any
    dynamodb: Any
    queue_url: str
    dlq_url: str
    table: str
    max_receive_count: int


@pytest.fixture
def aws() -> Any:
    """moto in-process: the secrets, queues and table, built from template.yaml's properties."""
    with mock_aws():
        auth = {
            "api_keys": [API_KEY, SECOND_API_KEY],
            "signing_secrets": [SIGNING_SECRET, SECOND_SIGNING_SECRET],
        }
        made = resources.create(TOKENS, auth, max_receive_count=3)
        assert (made.tokens_secret, made.auth_secret) == (TOKENS_SECRET, AUTH_SECRET)
        yield Aws(
            secrets=boto3.client("secretsmanager"),
            sqs=boto3.client("sqs"),
            dynamodb=boto3.client("dynamodb"),
            queue_url=made.queue_url,
            dlq_url=made.dlq_url,
            table=made.table,
            max_receive_count=made.max_receive_count,
        )


@pytest.fixture
def relay_env(
    monkeypatch: pytest.MonkeyPatch,
    aws: Any,
    lancepilot: ProviderSandbox,
    fluents: ProviderSandbox,
) -> dict[str, str]:
    """The environment the template gives the functions, pointed at moto and the stand-ins.

    Timeouts and backoff are shortened so fault tests run in well under a second each.
    """
    env = {
        "PROVIDER_TOKENS_SECRET": TOKENS_SECRET,
        "RELAY_AUTH_SECRET": AUTH_SECRET,
        "LANCEPILOT_API_URL": lancepilot.base_url,
        "FLUENTS_API_URL": fluents.base_url,
        "HTTP_CONNECT_TIMEOUT": "0.5",
        "HTTP_READ_TIMEOUT": "0.5",
        "SEND_BUDGET_SECONDS": "5",
        "BACKOFF_BASE_SECONDS": "0.01",
        "BACKOFF_MAX_SECONDS": "0.05",
        "IDEMPOTENCY_TABLE": aws.table,
        "DELIVERY_QUEUE_URL": aws.queue_url,
        "DEAD_LETTER_QUEUE_URL": aws.dlq_url,
        "MAX_RECEIVE_COUNT": str(aws.max_receive_count),
        "REDELIVERY_BASE_SECONDS": "1",
        "REDELIVERY_MAX_SECONDS": "4",
    }
    for name in ("DEFAULT_PROVIDER", "LANCEPILOT_WORKSPACE_ID", "FLUENTS_FROM_NUMBER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    json: Any


class Webhook:
    """Invokes the real webhook handler with HTTP API (payload 2.0) events built from events/."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def post(
        self,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        base64_body: bool = False,
        event: str = "http_post_lancepilot.json",
        context: LambdaContext | None = None,
    ) -> Answer:
        """POST ``body`` (JSON-encoded unless ``raw``); ``headers`` replace the event's own."""
        ev = copy.deepcopy(load_event(event))
        if raw is not None:
            payload = raw
        elif body is not None:
            payload = json.dumps(body).encode()
        else:
            payload = ev["body"].encode()
        if headers is not None:
            ev["headers"] = {k.lower(): v for k, v in headers.items()}
        if base64_body:
            ev["body"], ev["isBase64Encoded"] = base64.b64encode(payload).decode(), True
        else:
            ev["body"], ev["isBase64Encoded"] = payload.decode("utf-8"), False
        result = self.module.lambda_handler(ev, context or LambdaContext())
        return Answer(
            status=result["statusCode"],
            headers={k.lower(): v for k, v in (result.get("headers") or {}).items()},
            json=json.loads(result["body"]) if result.get("body") else None,
        )


@pytest.fixture
def logs() -> Any:
    """What the relay's logger writes, as text (Powertools holds its own reference to stdout)."""
    from relay.observability import logger

    buffer = io.StringIO()
    previous = logger.registered_handler.setStream(buffer)
    try:
        yield buffer
    finally:
        logger.registered_handler.setStream(previous)


def handler_session() -> boto3.session.Session:
    """The session the handlers' clients come from (Relay.from_env uses the default one).

    Hooks registered on its events reach only clients created afterwards: load the handler
    after a fixture that uses this.
    """
    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    return boto3.DEFAULT_SESSION


@pytest.fixture
def failing_aws_call() -> Any:
    """Make the next AWS call of a kind fail, at botocore's boundary, for clients created after.

    ``failing_aws_call("dynamodb.PutItem")`` fails the next PutItem once, as a DynamoDB
    hiccup would.
    """
    from botocore.exceptions import ClientError

    session = handler_session()
    registered = []

    def arm(operation: str, times: int = 1) -> None:
        left = [times]

        def fail(**_: Any) -> None:
            if left[0] > 0:
                left[0] -= 1
                raise ClientError(
                    {"Error": {"Code": "InternalServerError", "Message": "injected"}},
                    operation.split(".")[1],
                )

        event = f"before-call.{operation}"
        session.events.register(event, fail)
        registered.append((event, fail))

    yield arm
    for event, handler in registered:
        session.events.unregister(event, handler)


@dataclass
class SecretReads:
    """Each GetSecretValue the handlers make, by secret id, seen at botocore's boundary."""

    asked: list[str] = field(default_factory=list)
    delay: float = 0.0  # as Secrets Manager over a network would take, not moto in-process
    down: bool = False  # answer as a Secrets Manager outage would

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        from botocore.exceptions import ClientError

        self.asked.append(params["SecretId"])
        time.sleep(self.delay)
        if self.down:
            raise ClientError({"Error": {"Code": "InternalServiceError"}}, "GetSecretValue")


@pytest.fixture
def secret_reads() -> Any:
    """Watch GetSecretValue on clients created after: load the handler once this is set up."""
    events = handler_session().events
    reads = SecretReads()
    events.register("before-parameter-build.secrets-manager.GetSecretValue", reads)
    yield reads
    events.unregister("before-parameter-build.secrets-manager.GetSecretValue", reads)


@pytest.fixture
def webhook(relay_env: dict[str, str]) -> Webhook:
    return Webhook(load_function("webhook"))


@pytest.fixture
def delivery(relay_env: dict[str, str], aws: Aws) -> EventSourceMapping:
    """The delivery function behind a local event source mapping on the moto queue."""
    handler = load_function("delivery").lambda_handler
    return EventSourceMapping(aws.sqs, aws.queue_url, handler, wait_seconds=0, timeout_s=30)


def bearer(key: str = API_KEY) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {key}"}


def lancepilot_message(**fields: Any) -> dict[str, Any]:
    message = {
        "provider": "lancepilot",
        "to": "+14155550123",
        "text": "Your order 1042 has shipped.",
        "workspace": WORKSPACE,
    }
    message.update(fields)
    return {k: v for k, v in message.items() if v is not None}


def fluents_message(**fields: Any) -> dict[str, Any]:
    message = {
        "provider": "fluents",
        "to": "+4915123456789",
        "text": "Your code is 913402",
        "from": "+12025550143",
    }
    message.update(fields)
    return {k: v for k, v in message.items() if v is not None}
