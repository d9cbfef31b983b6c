"""Which queues the tool works on, and the AWS client that reaches them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mypy_boto3_sqs import SQSClient

DLQ_OUTPUT = "DeadLetterQueueUrl"
QUEUE_OUTPUT = "DeliveryQueueUrl"
DLQ_ENV = "RELAY_DLQ_URL"
QUEUE_ENV = "RELAY_QUEUE_URL"
# Endpoint overrides botocore reads by itself; any of them means "not real AWS".
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS")


class ConfigError(Exception):
    """A usage or configuration problem (exit code 2)."""


@dataclass(frozen=True)
class Target:
    """The queues to work on and how to reach them."""

    sqs: SQSClient
    dlq_url: str | None
    queue_url: str | None
    custom_endpoint: bool  # moto_server or another stand-in rather than AWS itself

    def need_dlq(self) -> str:
        """The dead-letter queue's URL, or a ConfigError saying how to give it."""
        if not self.dlq_url:
            raise ConfigError(f"which dead-letter queue? pass --stack, --dlq-url or set {DLQ_ENV}")
        return self.dlq_url

    def need_queue(self) -> str:
        """The delivery queue's URL, or a ConfigError saying how to give it."""
        if not self.queue_url:
            raise ConfigError(f"which delivery queue? pass --stack, --queue-url or set {QUEUE_ENV}")
        return self.queue_url


def connect(
    *,
    region: str | None,
    endpoint_url: str | None,
    stack: str | None,
    dlq_url: str | None,
    queue_url: str | None,
    environ: Mapping[str, str] = os.environ,
) -> Target:
    """Resolve the queues: flags first, then the stack's outputs, then the environment."""
    try:
        # boto3's default session: it reads the AWS config once per process, not per client.
        sqs = boto3.client("sqs", region_name=region, endpoint_url=endpoint_url)
        outputs = _stack_outputs(stack, region, endpoint_url) if stack else {}
    except (BotoCoreError, ClientError) as error:
        raise ConfigError(str(error)) from None
    if stack and not {DLQ_OUTPUT, QUEUE_OUTPUT} <= outputs.keys():
        raise ConfigError(f"stack {stack} has no {DLQ_OUTPUT} / {QUEUE_OUTPUT} outputs")
    return Target(
        sqs=sqs,
        dlq_url=dlq_url or outputs.get(DLQ_OUTPUT) or environ.get(DLQ_ENV) or None,
        queue_url=queue_url or outputs.get(QUEUE_OUTPUT) or environ.get(QUEUE_ENV) or None,
        custom_endpoint=bool(endpoint_url or any(environ.get(name) for name in ENDPOINT_ENVS)),
    )


def _stack_outputs(stack: str, region: str | None, endpoint_url: str | None) -> dict[str, str]:
    cloudformation = boto3.client("cloudformation", region_name=region, endpoint_url=endpoint_url)
    [found] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    return {
        output["OutputKey"]: output["OutputValue"]
        for output in found.get("Outputs", [])
        if "OutputKey" in output and "OutputValue" in output
    }
