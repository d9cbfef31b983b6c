"""Who may send: bearer API keys, or Standard Webhooks signatures (HMAC-SHA256), failing closed.

Standard Webhooks (standardwebhooks.com): headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``; secrets ``whsec_<base64>``.
Written here rather than taken from the ``standardwebhooks`` package because that package
verifies against one secret and pulls in an HTTP client; we need several (rotation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from relay.errors import Misconfigured, Unauthenticated

if TYPE_CHECKING:
    from collections.abc import Mapping

TOLERANCE_SECONDS = 5 * 60
_NOT_AUTHENTICATED = "not authenticated: send Authorization: Bearer <key> or a webhook signature"


class AuthKeys(NamedTuple):
    """The auth secret, decoded: API keys and HMAC signing keys (several of each, for rotation)."""

    api_keys: tuple[bytes, ...]
    signing_keys: tuple[bytes, ...]

    @classmethod
    def from_secret(cls, secret: Any) -> AuthKeys:
        """Read ``{"api_keys": [...], "signing_secrets": ["whsec_..."]}``; refuse anything else."""
        if not isinstance(secret, dict):
            raise Misconfigured("the auth secret must be a JSON object")
        api_keys = secret.get("api_keys", [])
        signing = secret.get("signing_secrets", [])
        if not _strings(api_keys) or not _strings(signing):
            raise Misconfigured(
                "the auth secret's api_keys and signing_secrets must be string lists"
            )
        try:
            signing_keys = tuple(_signing_key(s) for s in signing)
        except (binascii.Error, ValueError):
            raise Misconfigured("a signing secret is not whsec_<base64>") from None
        return cls(
            api_keys=tuple(k.encode() for k in api_keys if k),
            signing_keys=signing_keys,
        )


def authenticate(
    headers: Mapping[str, str], body: bytes, keys: AuthKeys, now: float | None = None
) -> str:
    """Return how the caller authenticated ("api_key" or "signature"), or raise Unauthenticated.

    ``headers`` must have lower-case names. Every comparison is constant-time.
    """
    if "authorization" in headers and _bearer_ok(headers["authorization"], keys.api_keys):
        return "api_key"
    if "webhook-signature" in headers and _signature_ok(headers, body, keys.signing_keys, now):
        return "signature"
    raise Unauthenticated(_NOT_AUTHENTICATED)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for a body, as a sender computes it."""
    mac = hmac.new(_signing_key(secret), _signed_content(msg_id, str(timestamp), body), "sha256")
    return "v1," + base64.b64encode(mac.digest()).decode()


def _bearer_ok(header: str, api_keys: tuple[bytes, ...]) -> bool:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    candidate = token.strip().encode("utf-8", "replace")
    # Compare against every key so timing does not tell which one (or how many) exist.
    matches = [hmac.compare_digest(candidate, key) for key in api_keys]
    return any(matches)


def _signature_ok(
    headers: Mapping[str, str], body: bytes, signing_keys: tuple[bytes, ...], now: float | None
) -> bool:
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    content = _signed_content(msg_id, timestamp, body)
    offered = [
        sig.encode("utf-8", "replace")
        for version, _, sig in (
            part.partition(",") for part in headers["webhook-signature"].split()
        )
        if version == "v1" and sig
    ]
    expected = [
        base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()) for key in signing_keys
    ]
    matches = [hmac.compare_digest(o, e) for o in offered for e in expected]
    return any(matches)


def _signed_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return msg_id.encode("utf-8", "replace") + b"." + timestamp.encode() + b"." + body


def _signing_key(secret: str) -> bytes:
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    if not key:
        raise ValueError("empty signing key")
    return key


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
