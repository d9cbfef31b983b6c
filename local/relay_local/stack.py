"""The local stack: moto_server for AWS, sandbox providers, the relay behind a local HTTP API."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay_local import resources
from relay_local.apigw import HttpApi
from relay_local.esm import EventSourceMapping
from relay_local.lambda_runtime import load_function
from relay_local.sandbox import ProviderSandbox

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay_local.resources import StackResources
    from relay_local.sandbox import Provider, Received

# Development values, printed at start: nothing here is a real credential.
DEV_API_KEY = "local-dev-key"
DEV_SIGNING_SECRET = "whsec_" + base64.b64encode(b"local-dev-signing-secret-32byte").decode()
DEV_TOKENS = {"lancepilot": "local-lancepilot-token", "fluents": "local-fluents-token"}
DEV_WORKSPACE = "3f0c6a52-8a1e-4d5b-9c61-2b7e0f4d9a10"
DEV_FROM_NUMBER = "+12025550143"
DEFAULT_MOTO_PORT = 4566
LOCAL_PREFIX = "webhook-relay-local"


@dataclass
class DevStack:
    """Everything ``make run`` starts, in one process. Ports of 0 pick free ones (tests)."""

    host: str = "127.0.0.1"
    port: int = 3000
    moto_port: int = DEFAULT_MOTO_PORT
    sandbox_ports: tuple[int, int] = (3001, 3002)
    on_provider_request: Callable[[Received], None] | None = None
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    sandboxes: dict[str, ProviderSandbox] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    aws_resources: StackResources | None = None
    environments: int = 1  # concurrent executions of each function
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. shorter timeouts for tests
    pollers: list[EventSourceMapping] = field(default_factory=list)
    _moto: subprocess.Popen[bytes] | None = None
    _api: HttpApi | None = None

    def start(self) -> DevStack:
        # moto_server in its own process: AWS calls then run on the other core, not under
        # this process's GIL with the handlers and the sandbox providers.
        self._moto, moto_port = start_moto_server(self.host, self.moto_port)
        aws = {
            "AWS_ENDPOINT_URL": f"http://{self.host}:{moto_port}",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": self.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        }
        os.environ.update(aws)
        os.environ.pop("AWS_PROFILE", None)

        urls, tokens = {}, dict(DEV_TOKENS)
        providers: tuple[Provider, Provider] = ("lancepilot", "fluents")
        for provider, port in zip(providers, self.sandbox_ports, strict=True):
            env_name = provider.upper()
            real_url = self.environ.get(f"{env_name}_API_URL")
            if real_url:  # send for real: the developer's URL and token
                urls[provider] = real_url
                tokens[provider] = self.environ.get(f"{env_name}_TOKEN", "")
                continue
            sandbox = ProviderSandbox(
                provider,
                token=DEV_TOKENS[provider],
                host=self.host,
                port=port,
                on_request=self.on_provider_request,
            ).start()
            self.sandboxes[provider] = sandbox
            urls[provider] = sandbox.base_url

        auth = {"api_keys": [DEV_API_KEY], "signing_secrets": [DEV_SIGNING_SECRET]}
        made = resources.create(tokens, auth, prefix=LOCAL_PREFIX)
        self.aws_resources = made
        self.env = {
            "PROVIDER_TOKENS_SECRET": made.tokens_secret,
            "RELAY_AUTH_SECRET": made.auth_secret,
            "IDEMPOTENCY_TABLE": made.table,
            "DELIVERY_QUEUE_URL": made.queue_url,
            # Both functions, as the template's Globals: the delivery function parks what it
            # gives up on, the webhook holds a synchronous send that got no answer.
            "DEAD_LETTER_QUEUE_URL": made.dlq_url,
            "MAX_RECEIVE_COUNT": str(made.max_receive_count),
            # Redelivery backoff in seconds rather than minutes, to watch it happen locally.
            "REDELIVERY_BASE_SECONDS": "2",
            "REDELIVERY_MAX_SECONDS": "30",
            "LANCEPILOT_API_URL": urls["lancepilot"],
            "FLUENTS_API_URL": urls["fluents"],
            "LANCEPILOT_WORKSPACE_ID": self.environ.get("LANCEPILOT_WORKSPACE_ID", DEV_WORKSPACE),
            "FLUENTS_FROM_NUMBER": self.environ.get("FLUENTS_FROM_NUMBER", DEV_FROM_NUMBER),
            "DEFAULT_PROVIDER": self.environ.get("DEFAULT_PROVIDER", ""),
            "POWERTOOLS_SERVICE_NAME": "webhook-relay",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "SECRETS_MAX_AGE_SECONDS": "5",  # edits to the local secrets show up quickly
        }
        self.env.update(self.extra_env)
        os.environ.update(self.env)

        # Each loaded handler is one execution environment, serving one invocation at a time.
        webhooks = [load_function("webhook").lambda_handler for _ in range(self.environments)]
        self._api = HttpApi({"POST /v1/messages": webhooks})
        server = self._api.serve(self.host, self.port)
        self.url = f"http://{self.host}:{server.server_address[1]}"

        import boto3

        sqs = boto3.client("sqs")
        self.pollers = [
            EventSourceMapping(
                sqs, made.queue_url, load_function("delivery").lambda_handler, wait_seconds=1
            ).start()
            for _ in range(self.environments)
        ]
        return self

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stop()
        if self._api is not None:
            self._api.stop()
        for sandbox in self.sandboxes.values():
            sandbox.stop()
        if self._moto is not None:
            end(self._moto)


def end(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``: seen once at the end of a
    50,000-message soak, moto_server took SIGTERM and did not exit within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_moto_server(host: str, port: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    """moto_server in a process of its own, listening; and its port (``0``: a free one).

    relay_local.moto_server: moto's server with its SQS and DynamoDB calls made thread-safe.
    """
    port = port or _free_port(host)
    process = subprocess.Popen(
        [sys.executable, "-m", "relay_local.moto_server", "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(host, port, process)
    except RuntimeError:
        process.kill()
        process.wait()
        raise
    return process, port


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto_server did not start within 30 s")


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
