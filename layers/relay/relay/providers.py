"""Translation of a canonical message into each provider's documented request.

Lancepilot (WhatsApp, API v3): ``POST /workspaces/{workspace}/contacts/number/{number}/
messages/text`` with ``{"text": {"body": ...}}``. Fluents (SMS, hosted API): ``POST
/v1/messages`` with ``{"to_number", "from_number", "message"}``. Both take ``Authorization:
Bearer <token>``. Every request also carries ``X-Relay-Id``, which neither document declares:
see docs/providers.md, with what the documents leave open and how it is decided.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from relay.phone import digits

if TYPE_CHECKING:
    from relay.config import ProviderName, Settings
    from relay.message import Message

MAX_ERROR_DETAIL = 2048
# The message's relay id, for tracing a send on the provider's side and counting deliveries in
# tests. Not an idempotency key: neither provider documents one, and unknown headers are ignored.
RELAY_ID_HEADER = "X-Relay-Id"


class OutboundRequest(NamedTuple):
    """One provider call: always a JSON POST."""

    url: str
    body: bytes
    headers: dict[str, str]


def build_request(
    message: Message, token: str, settings: Settings, *, relay_id: str | None = None
) -> OutboundRequest:
    """The provider call that sends ``message``, exactly as the provider's document says, plus
    ``X-Relay-Id: <relay_id>`` when a relay id is given."""
    payload: dict[str, Any]
    if message.provider == "lancepilot":
        assert message.workspace is not None
        # {number} is "Number of the contact": country code and digits, no "+".
        url = (
            f"{settings.lancepilot_api_url}/workspaces/{quote(message.workspace, safe='')}"
            f"/contacts/number/{quote(digits(message.to), safe='')}/messages/text"
        )
        payload = {"text": {"body": message.text}}
    else:
        assert message.sender is not None
        url = f"{settings.fluents_api_url}/v1/messages"
        payload = {"to_number": message.to, "from_number": message.sender, "message": message.text}
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    if relay_id is not None:
        # Percent-encoded, should a caller of this function pass text that is no header value;
        # the relay's ids (UUIDs, SQS message ids, a producer's plain RelayId) pass unchanged.
        headers[RELAY_ID_HEADER] = quote(relay_id, safe=":")
    return OutboundRequest(
        url=url, body=json.dumps(payload, ensure_ascii=False).encode(), headers=headers
    )


def read_receipt(provider: ProviderName, body: bytes) -> dict[str, Any] | None:
    """What a provider's success answer tells, if anything.

    Lancepilot documents ``{"status", "message", "data"}``; Fluents documents no body at all.
    Neither is relied upon: a 2xx means accepted, whatever (or nothing) comes with it.
    """
    parsed = _json_or_none(body)
    if not isinstance(parsed, dict):
        return None
    if provider == "lancepilot" and isinstance(parsed.get("data"), dict):
        return dict(parsed["data"])
    return parsed


def read_error(body: bytes) -> Any:
    """A provider's error answer, for the caller: its JSON when it sent JSON, else its text.

    Lancepilot's 401/404/422 and Fluents' 400/404 are JSON objects with ``message`` (and
    ``errors`` for Lancepilot's 422); anything else is passed on as text, bounded.
    """
    parsed = _json_or_none(body[: MAX_ERROR_DETAIL * 4])
    if isinstance(parsed, dict):
        return parsed
    text = body[:MAX_ERROR_DETAIL].decode("utf-8", "replace").strip()
    return {"message": text} if text else None


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None
