"""The relay's AWS clients as they go on the wire: on the per-message path, a fixed User-Agent.

botocore rebuilds its User-Agent twice a call; the clients called for every message (DynamoDB,
SQS) are given one built once (relay.secrets.pooled). Each client here is the relay's own,
made by its own classes from a boto3 session whose requests are read at botocore's last step
before sending, with moto answering.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore

from relay.idempotency import Idempotency
from relay.queues import Queues
from relay.secrets import HOT_PATH_USER_AGENT, SecretsManagerStore
from relay_local.lambda_runtime import LambdaContext
from tests.conftest import TOKENS_SECRET


def watched_session() -> tuple[boto3.session.Session, list[tuple[str, str]]]:
    """A session whose clients report (service, User-Agent) of every request they send."""
    session = boto3.session.Session(region_name="us-east-1")
    sent: list[tuple[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        agent = request.headers["User-Agent"]
        service = request.url.split("//", 1)[1].split(".", 1)[0]
        sent.append((service, agent.decode() if isinstance(agent, bytes) else agent))

    session.events.register("before-send", capture)  # copied into every client made after
    return session, sent


def test_the_per_message_clients_send_the_fixed_user_agent(aws):
    session, sent = watched_session()
    queues = Queues(session, aws.queue_url, aws.dlq_url, threads=4)
    idempotency = Idempotency(session, aws.table, ttl_seconds=3600, threads=4)
    idempotency.start_invocation(LambdaContext())  # as each handler does

    queues.enqueue('{"provider": "fluents"}', {"RelayId": "r-1"})
    once = idempotency.once(lambda request: {"sent": request["key"]})
    assert once(request={"key": "ua-test", "message": {"text": "hi"}}) == {"sent": "ua-test"}

    # boto3's session appends its Botocore/<version> (and Powertools, once loaded, its PT/).
    fixed = f"{HOT_PATH_USER_AGENT} Botocore/{botocore.__version__}"
    assert {service for service, _ in sent} == {"sqs", "dynamodb"}
    assert len(sent) >= 3  # SendMessage; the record written, then completed
    assert all(agent.startswith(fixed) for _, agent in sent), sent


def test_secrets_manager_keeps_botocores_own_user_agent(aws):
    session, sent = watched_session()
    store = SecretsManagerStore(session, max_age=300)

    assert store.get_json(TOKENS_SECRET)

    [(service, agent)] = sent
    assert service == "secretsmanager"
    assert agent.startswith(("Boto3/", "Botocore/"))
    assert "webhook-relay" not in agent
