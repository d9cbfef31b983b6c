"""The stack's AWS resources in moto, built from template.yaml's own properties.

Tests and ``make run`` both use this, so the mocks cannot drift from the infrastructure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import yaml

from relay_local.lambda_runtime import REPO

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class StackResources:
    queue_url: str
    dlq_url: str
    table: str
    tokens_secret: str
    auth_secret: str
    max_receive_count: int  # MaxReceiveCount: the delivery function's MAX_RECEIVE_COUNT
    # The queue's redrive policy's maxReceiveCount: one more, for an invocation that ended
    # without an outcome on the function's last receive (template.yaml works it out).
    redrive_max_receive_count: int


def load_template() -> dict[str, Any]:
    """template.yaml, with CloudFormation's short tags (``!Ref`` …) read as ``{tag: value}``."""

    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return {suffix: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {suffix: loader.construct_sequence(node, deep=True)}
        return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", tag)
    loaded: dict[str, Any] = yaml.load((REPO / "template.yaml").read_text(), Loader=Loader)  # noqa: S506 - a SafeLoader
    return loaded


def create(
    tokens: dict[str, str],
    auth: dict[str, list[str]],
    prefix: str = "webhook-relay",
    max_receive_count: int | None = None,
) -> StackResources:
    """Create the table, the queues and the two secrets with the template's settings.

    ``max_receive_count`` overrides the template parameter's default (tests use fewer).
    """
    template = load_template()
    resources, params = template["Resources"], template["Parameters"]
    receives = max_receive_count or int(params["MaxReceiveCount"]["Default"])

    table_name = f"{prefix}-idempotency"
    table = resources["IdempotencyTable"]["Properties"]
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(
        TableName=table_name,
        KeySchema=table["KeySchema"],
        AttributeDefinitions=table["AttributeDefinitions"],
        BillingMode=table["BillingMode"],
    )
    dynamodb.update_time_to_live(
        TableName=table_name, TimeToLiveSpecification=table["TimeToLiveSpecification"]
    )

    sqs = boto3.client("sqs")
    dlq = resources["DeliveryDeadLetterQueue"]["Properties"]
    dlq_url = sqs.create_queue(
        QueueName=f"{prefix}-dlq",
        Attributes={
            "MessageRetentionPeriod": str(dlq["MessageRetentionPeriod"]),
            "MaximumMessageSize": str(dlq["MaximumMessageSize"]),
        },
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue = resources["DeliveryQueue"]["Properties"]
    queue_receives = int(
        _evaluate(queue["RedrivePolicy"]["maxReceiveCount"], {"MaxReceiveCount": receives})
    )
    redrive = {
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": queue_receives,
    }
    queue_url = sqs.create_queue(
        QueueName=f"{prefix}-delivery",
        Attributes={
            "VisibilityTimeout": str(queue["VisibilityTimeout"]),
            "MessageRetentionPeriod": str(queue["MessageRetentionPeriod"]),
            "MaximumMessageSize": str(queue["MaximumMessageSize"]),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]

    secrets = boto3.client("secretsmanager")
    tokens_secret, auth_secret = f"{prefix}/provider-tokens", f"{prefix}/auth"
    secrets.create_secret(Name=tokens_secret, SecretString=json.dumps(tokens))
    secrets.create_secret(Name=auth_secret, SecretString=json.dumps(auth))
    return StackResources(
        queue_url, dlq_url, table_name, tokens_secret, auth_secret, receives, queue_receives
    )


def _evaluate(value: Any, parameters: Mapping[str, Any]) -> Any:
    """A template value with the intrinsic functions it uses (``Ref`` to a parameter,
    ``Select``) worked out as CloudFormation would, given the parameters' values."""
    if isinstance(value, dict) and len(value) == 1:
        [(function, argument)] = value.items()
        if function == "Ref" and argument in parameters:
            return parameters[argument]
        if function == "Select":
            index, choices = (_evaluate(item, parameters) for item in argument)
            return _evaluate(choices[int(index)], parameters)
    return value
