"""The canonical message: what a caller or a queue producer asks the relay to send."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from relay.config import PROVIDERS, ProviderName
from relay.errors import InvalidMessage
from relay.ids import is_uuid
from relay.phone import is_e164, is_valid_number

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.config import Settings

MAX_TEXT = 4096
MAX_IDEMPOTENCY_KEY = 255
FIELDS = frozenset({"provider", "to", "text", "from", "workspace", "idempotency_key"})
# Fields that only make sense for one provider; sending them to the other is refused.
ONLY_FOR: dict[str, ProviderName] = {"from": "fluents", "workspace": "lancepilot"}


class Message(NamedTuple):
    """A validated message, with the deployment's defaults filled in."""

    provider: ProviderName
    to: str
    text: str
    sender: str | None = None  # Fluents' from_number
    workspace: str | None = None  # Lancepilot's workspace UUID
    idempotency_key: str | None = None


class Defaults(NamedTuple):
    """What the deployment supplies when a message leaves a field out."""

    provider: ProviderName | None = None
    workspace: str | None = None
    sender: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Defaults:
        return cls(
            provider=settings.default_provider,
            workspace=settings.lancepilot_workspace_id,
            sender=settings.fluents_from_number,
        )


def parse_message(data: Any, defaults: Defaults) -> Message:
    """Validate a decoded JSON object as a canonical message.

    Raises InvalidMessage naming every bad, missing or unknown field at once, so a caller fixes
    a request in one round trip.
    """
    if not isinstance(data, dict):
        raise InvalidMessage({"body": ["must be a JSON object"]})
    errors: dict[str, list[str]] = {}

    def fail(field: str, problem: str) -> None:
        errors.setdefault(field, []).append(problem)

    def text_field(name: str, *, lo: int, hi: int) -> str | None:
        value = data.get(name)
        if name not in data:
            return None
        if not isinstance(value, str):
            fail(name, "must be a string")
            return None
        if not lo <= len(value) <= hi:
            fail(name, f"must be {lo} to {hi} characters long")
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, legal as a JSON escape
            fail(name, "must be valid Unicode text")
            return None
        return value

    for name in sorted(data.keys() - FIELDS):
        fail(str(name), "unknown field")

    provider = data.get("provider", defaults.provider)
    if provider is None:
        fail("provider", "is required (no DEFAULT_PROVIDER is configured)")
    elif provider not in PROVIDERS:
        fail("provider", f"must be one of: {', '.join(PROVIDERS)}")
        provider = None

    to = text_field("to", lo=1, hi=64)
    if "to" not in data:
        fail("to", "is required")
    elif to is not None:
        to = _phone_problem(to, "to", fail)

    text = text_field("text", lo=1, hi=MAX_TEXT)
    if "text" not in data:
        fail("text", "is required")

    sender = text_field("from", lo=1, hi=64)
    if sender is not None:
        sender = _phone_problem(sender, "from", fail)

    workspace = text_field("workspace", lo=1, hi=64)
    if workspace is not None and not is_uuid(workspace):
        fail("workspace", "must be a UUID (8-4-4-4-12 hex digits)")

    idempotency_key = text_field("idempotency_key", lo=1, hi=MAX_IDEMPOTENCY_KEY)

    if provider is not None:
        for field, owner in ONLY_FOR.items():
            if field in data and owner != provider:
                fail(field, f"does not apply to provider {provider}")
        if provider == "fluents" and "from" not in data and defaults.sender is None:
            fail("from", "is required for fluents (no FLUENTS_FROM_NUMBER is configured)")
        if provider == "lancepilot" and "workspace" not in data and defaults.workspace is None:
            fail(
                "workspace", "is required for lancepilot (no LANCEPILOT_WORKSPACE_ID is configured)"
            )

    if errors:
        raise InvalidMessage(errors)
    assert provider is not None
    assert to is not None
    assert text is not None
    return Message(
        provider=provider,
        to=to,
        text=text,
        sender=(sender or defaults.sender) if provider == "fluents" else None,
        workspace=(workspace or defaults.workspace) if provider == "lancepilot" else None,
        idempotency_key=idempotency_key,
    )


def _phone_problem(value: str, field: str, fail: Callable[[str, str], None]) -> str | None:
    if not is_e164(value):
        fail(field, "must be an E.164 number: + and 8 to 15 digits, e.g. +14155550123")
        return None
    if not is_valid_number(value):
        fail(field, "is not a valid phone number")
        return None
    return value
