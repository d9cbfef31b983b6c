"""Wiring: the process-wide objects a handler builds once at init and reuses on every invocation."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import boto3

from relay.config import Settings
from relay.delivery import Deliverer
from relay.idempotency import Idempotency
from relay.message import Defaults
from relay.queues import Queues
from relay.secrets import AWS_CALL_LIMIT_SECONDS, Credentials, SecretsManagerStore
from relay.transport import Transport

if TYPE_CHECKING:
    from relay.queue_worker import QueueWorker
    from relay.service import MessageService

# Time kept back from the Lambda's remaining time to shape and return the answer.
ANSWER_MARGIN_SECONDS = 1.5
# ... and, before that, for what follows a synchronous send: the idempotency record's save and,
# for a send that got no answer, parking the message (MessageService._hold): one bounded AWS
# call each. Should both take their limit, the Lambda still answers before its timeout, with the
# message held and its record kept, instead of timing out with the record in progress.
AFTER_SEND_SECONDS = 2 * AWS_CALL_LIMIT_SECONDS + ANSWER_MARGIN_SECONDS


class Relay(NamedTuple):
    """Settings, secrets, AWS clients and the provider client, shared across invocations."""

    settings: Settings
    defaults: Defaults
    credentials: Credentials
    deliverer: Deliverer
    queues: Queues
    idempotency: Idempotency

    @classmethod
    def from_env(cls) -> Relay:
        """Build from the environment; ConfigError here fails the Lambda init, loudly."""
        settings = Settings.from_env()
        # One session for every client: they share its loaded service models (cold start).
        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        session = boto3.DEFAULT_SESSION
        assert session is not None
        store = SecretsManagerStore(session, settings.secrets_max_age)
        credentials = Credentials(store, settings)
        return cls(
            settings=settings,
            defaults=Defaults.from_settings(settings),
            credentials=credentials,
            deliverer=Deliverer(settings, Transport(settings), credentials),
            queues=Queues(
                session,
                settings.delivery_queue_url,
                settings.dead_letter_queue_url,
                threads=settings.batch_threads,
            ),
            idempotency=Idempotency(
                session,
                settings.idempotency_table,
                settings.idempotency_ttl,
                threads=settings.batch_threads,
            ),
        )

    def service(self) -> MessageService:
        """What the webhook does with accepted messages."""
        from relay.service import MessageService  # the webhook's alone: not in delivery's init

        return MessageService(self.deliverer, self.queues, self.idempotency)

    def worker(self) -> QueueWorker:
        """What the delivery function does with queued messages."""
        from relay.queue_worker import QueueWorker  # delivery's alone: not in the webhook's init

        return QueueWorker(
            self.settings, self.defaults, self.deliverer, self.queues, self.idempotency
        )

    def deadline(self, remaining_ms: int) -> float:
        """When a synchronous send must be over (time.monotonic()): the send budget, or the
        Lambda's time less what must still fit after it (AFTER_SEND_SECONDS)."""
        room = min(self.settings.send_budget, remaining_ms / 1000 - AFTER_SEND_SECONDS)
        return time.monotonic() + room
