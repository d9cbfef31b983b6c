"""The local stack: moto_server for AWS, sandbox providers, the relay behind a local HTTP API."""

from __future__ import annotations

import base64
import logging
import os
import socket
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
    poller: EventSourceMapping | None = None
    _moto: Any = None
    _api: HttpApi | None = None

    def start(self) -> DevStack:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto_server's per-request lines
        moto_port = self.moto_port or _free_port(self.host)
        self._moto = ThreadedMotoServer(ip_address=self.host, port=moto_port, verbose=False)
        self._moto.start()
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
        os.environ.update(self.env)

        webhook = load_function("webhook")
        self._api = HttpApi({"POST /v1/messages": webhook.lambda_handler})
        server = self._api.serve(self.host, self.port)
        self.url = f"http://{self.host}:{server.server_address[1]}"

        import boto3

        delivery = load_function("delivery")
        self.poller = EventSourceMapping(
            boto3.client("sqs"), made.queue_url, delivery.lambda_handler, wait_seconds=1
        ).start()
        return self

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        if self._api is not None:
            self._api.stop()
        for sandbox in self.sandboxes.values():
            sandbox.stop()
        if self._moto is not None:
            self._moto.stop()


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
