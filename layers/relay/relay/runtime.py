"""Wiring: the process-wide objects a handler builds once at init and reuses on every invocation."""

from __future__ import annotations

import time
from dataclasses import dataclass

from relay.config import Settings
from relay.delivery import Deliverer
from relay.message import Defaults
from relay.secrets import Credentials, SecretsManagerStore
from relay.transport import Transport

# Time kept back from the Lambda's remaining time to shape and return the answer.
ANSWER_MARGIN_SECONDS = 1.5


@dataclass(frozen=True)
class Relay:
    """Settings, secrets and the provider client, shared across invocations of one process."""

    settings: Settings
    defaults: Defaults
    credentials: Credentials
    deliverer: Deliverer

    @classmethod
    def from_env(cls) -> Relay:
        """Build from the environment; ConfigError here fails the Lambda init, loudly."""
        settings = Settings.from_env()
        credentials = Credentials(SecretsManagerStore(settings.secrets_max_age), settings)
        return cls(
            settings=settings,
            defaults=Defaults.from_settings(settings),
            credentials=credentials,
            deliverer=Deliverer(settings, Transport(settings), credentials),
        )

    def deadline(self, remaining_ms: int) -> float:
        """When sending must be over (time.monotonic()): the send budget or the Lambda's time."""
        room = min(self.settings.send_budget, remaining_ms / 1000 - ANSWER_MARGIN_SECONDS)
        return time.monotonic() + room
