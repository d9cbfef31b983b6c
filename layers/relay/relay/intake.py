"""The HTTP entry: from raw body and headers to a validated message, checks in a fixed order.

Order matters: size first (cheap, and before reading anything), then authentication, then
everything else, so an unauthenticated caller learns nothing about what a valid body would be.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any, NamedTuple

from relay.auth import authenticate
from relay.errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType
from relay.message import parse_message

if TYPE_CHECKING:
    from collections.abc import Mapping

    from relay.message import Defaults, Message
    from relay.secrets import Credentials

MAX_BODY_BYTES = 64 * 1024
MAX_KEY_LENGTH = 255


class HttpRequest(NamedTuple):
    """An HTTP request as the relay needs it: header names in lower case, the body as received
    (API Gateway passes binary bodies base64-encoded)."""

    headers: Mapping[str, str]
    body: str
    base64_encoded: bool = False

    def raw_body(self) -> bytes:
        """The bytes the caller sent; call only after read_message accepted the request."""
        body = _decode(self)
        assert body is not None
        return body


class Incoming(NamedTuple):
    """An accepted request: its message, and the key that makes sending it idempotent."""

    message: Message
    idempotency_key: str | None


def read_message(request: HttpRequest, credentials: Credentials, defaults: Defaults) -> Incoming:
    """Check and parse a POST /v1/messages request; raise the RelayError a caller should see."""
    body = _decode(request)
    size = len(body) if body is not None else len(request.body) * 3 // 4
    if size > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
    method = authenticate(request.headers, body or b"", credentials.auth_keys())
    if body is None:
        raise MalformedBody("the body is not valid base64")
    _check_content_type(request.headers.get("content-type"))
    message = parse_message(load_json(body), defaults)
    return Incoming(message, caller_key(message, request.headers, signed=method == "signature"))


def caller_key(message: Message, headers: Mapping[str, str], *, signed: bool) -> str | None:
    """The caller's idempotency key: the body's, else ``Idempotency-Key``, else ``webhook-id``.

    A signed request's key comes only from what the signature covers (the body, webhook-id):
    a replay could add or change an unsigned ``Idempotency-Key`` to be sent again.
    """
    header = "" if signed else headers.get("idempotency-key", "").strip()
    return (
        message.idempotency_key
        or header[:MAX_KEY_LENGTH]
        or headers.get("webhook-id", "").strip()[:MAX_KEY_LENGTH]
        or None
    )


def _decode(request: HttpRequest) -> bytes | None:
    """The exact bytes the caller sent (signatures cover them); None if they cannot be had."""
    if request.base64_encoded:
        try:
            return base64.b64decode(request.body, validate=True)
        except (binascii.Error, ValueError):
            return None
    # A str from API Gateway is valid Unicode; lone surrogates fail later, as a 400.
    return request.body.encode("utf-8", "surrogatepass")


def prefers_async(headers: Mapping[str, str]) -> bool:
    """RFC 7240: ``Prefer: respond-async`` among the header's comma-separated preferences."""
    preferences = headers.get("prefer", "").lower().split(",")
    return any(p.split(";")[0].strip() == "respond-async" for p in preferences)


def load_json(body: bytes | str) -> Any:
    """Decode a JSON object strictly: UTF-8, no NaN or Infinity; MalformedBody otherwise."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        data = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise MalformedBody("the body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise MalformedBody("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedBody("the body must be a JSON object")
    return data


def _check_content_type(value: str | None) -> None:
    if value is None or not value.strip():
        return  # a missing Content-Type is read as JSON
    media_type, _, params = value.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedMediaType("send the message as application/json")
    for param in params.split(";"):
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise UnsupportedMediaType("the body must be UTF-8 encoded JSON")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
