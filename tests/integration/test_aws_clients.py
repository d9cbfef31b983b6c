"""The relay's AWS clients as they go on the wire: bounded, and on the hot path a fixed User-Agent.

botocore rebuilds its User-Agent twice a call; the clients called for every message (DynamoDB,
SQS) are given one built once (relay.secrets.pooled). The header each request carries is read
at botocore's last step before sending, with moto answering.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore
from moto import mock_aws

from relay.secrets import FAST_FAIL, HOT_PATH_USER_AGENT, pooled


def user_agents(client: Any, call: str, **params: Any) -> list[str]:
    """The User-Agent of every request ``client.<call>(**params)`` sent."""
    seen: list[str] = []

    def capture(request: Any, **_: Any) -> None:
        value = request.headers["User-Agent"]
        seen.append(value.decode() if isinstance(value, bytes) else value)

    client.meta.events.register("before-send", capture)
    getattr(client, call)(**params)
    return seen


def test_per_message_clients_send_the_fixed_user_agent_and_stay_bounded():
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        dynamodb = session.client("dynamodb", config=pooled(20))
        sqs = session.client("sqs", config=pooled(20))

        # boto3's session appends its Botocore/<version> (and Powertools, once loaded, its PT/).
        fixed = f"{HOT_PATH_USER_AGENT} Botocore/{botocore.__version__}"
        [from_dynamodb] = user_agents(dynamodb, "list_tables")
        [from_sqs] = user_agents(sqs, "list_queues")
        assert from_dynamodb.startswith(fixed)
        assert from_sqs.startswith(fixed)
        config = dynamodb.meta.config
        assert (config.connect_timeout, config.read_timeout) == (1.0, 2.0)
        assert config.retries["total_max_attempts"] == 2
        assert config.max_pool_connections == 20


def test_secrets_manager_keeps_botocores_own_user_agent():
    with mock_aws():
        client = boto3.session.Session(region_name="us-east-1").client(
            "secretsmanager", config=FAST_FAIL
        )

        [agent] = user_agents(client, "list_secrets")
        assert agent.startswith("Boto3/") or agent.startswith("Botocore/")
        assert "webhook-relay" not in agent
