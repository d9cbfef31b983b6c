"""The relay's settings, read from the environment once at init into one frozen object."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, NamedTuple

from relay.ids import is_uuid
from relay.phone import is_e164

if TYPE_CHECKING:
    from collections.abc import Mapping

ProviderName = Literal["lancepilot", "fluents"]
PROVIDERS: tuple[ProviderName, ...] = ("lancepilot", "fluents")
# A batch's threads per request a provider may have in flight (relay.batch.send_lanes).
LANE_THREADS_PER_SLOT = 2


class ConfigError(ValueError):
    """The deployment's environment is wrong; raised at init so the mistake shows at once."""


class Settings(NamedTuple):
    """Everything the relay reads from its environment. Env names live here and nowhere else."""

    provider_tokens_secret: str
    auth_secret: str
    idempotency_table: str
    lancepilot_api_url: str = "https://lancepilot.com/api/v3"
    fluents_api_url: str = "https://api.fluents.ai"
    default_provider: ProviderName | None = None
    lancepilot_workspace_id: str | None = None
    fluents_from_number: str | None = None
    # Delivery tuning. The sync path must answer well inside API Gateway's 29 s.
    connect_timeout: float = 3.05
    read_timeout: float = 8.0
    send_budget: float = 20.0
    max_attempts: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 4.0
    max_connections: int = 10
    secrets_max_age: int = 300
    # Idempotency: how long a delivered message's key is remembered.
    idempotency_ttl: int = 14 * 24 * 3600  # the DLQ's retention: see template.yaml
    # The SQS side. The webhook queues to the delivery queue (Prefer: respond-async) and parks
    # a synchronous send that got no answer in the dead-letter queue (without one configured,
    # such a send is answered 504 and its key freed, as before).
    delivery_queue_url: str | None = None
    dead_letter_queue_url: str | None = None
    max_receive_count: int = 5
    provider_concurrency: int = 10
    redelivery_base: float = 30.0
    redelivery_max: float = 900.0

    @property
    def batch_threads(self) -> int:
        """Threads an SQS batch may run at once (relay.batch.send_lanes), each with AWS calls."""
        return (LANE_THREADS_PER_SLOT * len(PROVIDERS) + 1) * self.provider_concurrency

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse and check the environment; raise ConfigError naming every bad variable."""
        env = os.environ if environ is None else environ
        default = cls._field_defaults
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None  # the template passes "" for an unset parameter

        def number(name: str, default: float, kind: type[float] | type[int] = float) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{name} must be a number, got {raw!r}")
                return default
            if value <= 0:
                problems.append(f"{name} must be positive, got {raw!r}")
                return default
            return value

        tokens_secret = get("PROVIDER_TOKENS_SECRET")
        auth_secret = get("RELAY_AUTH_SECRET")
        table = get("IDEMPOTENCY_TABLE")
        for name, value, what in (
            ("PROVIDER_TOKENS_SECRET", tokens_secret, "a Secrets Manager secret id"),
            ("RELAY_AUTH_SECRET", auth_secret, "a Secrets Manager secret id"),
            ("IDEMPOTENCY_TABLE", table, "a DynamoDB table name"),
        ):
            if value is None:
                problems.append(f"{name} is required ({what})")

        default_provider = get("DEFAULT_PROVIDER")
        if default_provider is not None and default_provider not in PROVIDERS:
            problems.append(f"DEFAULT_PROVIDER must be one of {', '.join(PROVIDERS)}")
            default_provider = None

        workspace = get("LANCEPILOT_WORKSPACE_ID")
        if workspace is not None and not is_uuid(workspace):
            problems.append("LANCEPILOT_WORKSPACE_ID must be a UUID")
        sender = get("FLUENTS_FROM_NUMBER")
        if sender is not None and not is_e164(sender):
            problems.append("FLUENTS_FROM_NUMBER must be an E.164 number (+ and 8-15 digits)")

        urls = {}
        for name, fallback in (
            ("LANCEPILOT_API_URL", default["lancepilot_api_url"]),
            ("FLUENTS_API_URL", default["fluents_api_url"]),
        ):
            url = (get(name) or fallback).rstrip("/")
            if not url.startswith(("https://", "http://")):
                problems.append(f"{name} must be an http(s) URL")
            urls[name] = url

        settings = cls(
            provider_tokens_secret=tokens_secret or "",
            auth_secret=auth_secret or "",
            idempotency_table=table or "",
            lancepilot_api_url=urls["LANCEPILOT_API_URL"],
            fluents_api_url=urls["FLUENTS_API_URL"],
            default_provider=default_provider,
            lancepilot_workspace_id=workspace,
            fluents_from_number=sender,
            connect_timeout=number("HTTP_CONNECT_TIMEOUT", default["connect_timeout"]),
            read_timeout=number("HTTP_READ_TIMEOUT", default["read_timeout"]),
            send_budget=number("SEND_BUDGET_SECONDS", default["send_budget"]),
            max_attempts=int(number("MAX_SEND_ATTEMPTS", default["max_attempts"], int)),
            backoff_base=number("BACKOFF_BASE_SECONDS", default["backoff_base"]),
            backoff_max=number("BACKOFF_MAX_SECONDS", default["backoff_max"]),
            max_connections=int(
                number("MAX_PROVIDER_CONNECTIONS", default["max_connections"], int)
            ),
            secrets_max_age=int(number("SECRETS_MAX_AGE_SECONDS", default["secrets_max_age"], int)),
            idempotency_ttl=int(number("IDEMPOTENCY_TTL_SECONDS", default["idempotency_ttl"], int)),
            delivery_queue_url=get("DELIVERY_QUEUE_URL"),
            dead_letter_queue_url=get("DEAD_LETTER_QUEUE_URL"),
            max_receive_count=int(number("MAX_RECEIVE_COUNT", default["max_receive_count"], int)),
            provider_concurrency=int(
                number("PROVIDER_CONCURRENCY", default["provider_concurrency"], int)
            ),
            redelivery_base=number("REDELIVERY_BASE_SECONDS", default["redelivery_base"]),
            redelivery_max=number("REDELIVERY_MAX_SECONDS", default["redelivery_max"]),
        )
        if problems:
            raise ConfigError("; ".join(problems))
        return settings
