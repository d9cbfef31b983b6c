"""Every way a message can fail, as exceptions that carry the HTTP answer they map to.

The HTTP handler turns a RelayError into its status and body; the SQS handler reads ``kind``
to decide between retry and the dead-letter queue.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

FailureKind = Literal["invalid", "permanent", "transient", "ambiguous", "internal"]
DEFAULT_RETRY_AFTER = 10  # seconds, when a provider is unavailable and did not say for how long


class RelayError(Exception):
    """Base of the relay's own errors. ``status`` is the HTTP answer, ``kind`` the failure class."""

    status: ClassVar[int] = 500
    kind: ClassVar[FailureKind] = "internal"
    reason: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.relay_id: str | None = None  # set once the message has an id

    def body(self) -> dict[str, Any]:
        """What the caller is told: the problem, never a secret."""
        return {"message": self.message}

    def answer(self) -> dict[str, Any]:
        """The JSON answer: ``body()`` plus the relay id when the message got that far."""
        body = self.body()
        if self.relay_id is not None:
            body["id"] = self.relay_id
        return body

    def headers(self) -> dict[str, str]:
        return {}


# The relay's own 4xx: nothing was sent to a provider.
class PayloadTooLarge(RelayError):
    status, kind, reason = 413, "invalid", "too_large"


class Unauthenticated(RelayError):
    status, kind, reason = 401, "invalid", "unauthenticated"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="webhook-relay"'}


class UnsupportedMediaType(RelayError):
    status, kind, reason = 415, "invalid", "unsupported_media_type"


class MalformedBody(RelayError):
    status, kind, reason = 400, "invalid", "malformed"


class InvalidMessage(RelayError):
    """The body is JSON but not a valid canonical message; ``errors`` names every bad field."""

    status, kind, reason = 422, "invalid", "invalid"

    def __init__(self, errors: dict[str, list[str]]) -> None:
        fields = ", ".join(sorted(errors))
        super().__init__(f"invalid message: {fields}")
        self.errors = errors

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "errors": self.errors}


# The provider's side.
class ProviderRejected(RelayError):
    """The provider refused the message (4xx): final, never retried."""

    status, kind, reason = 502, "permanent", "provider_rejected"

    def __init__(self, provider: str, provider_status: int, provider_error: Any) -> None:
        super().__init__(f"{provider} refused the message with HTTP {provider_status}")
        self.provider = provider
        self.provider_status = provider_status
        self.provider_error = provider_error

    def body(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "provider": self.provider,
            "provider_status": self.provider_status,
            "provider_error": self.provider_error,
        }


class ProviderUnavailable(RelayError):
    """The provider stayed unavailable (5xx, 429, connection failures) after every retry."""

    status, kind, reason = 503, "transient", "unavailable"

    def __init__(
        self, provider: str, detail: str, provider_status: int | None, retry_after: int | None
    ) -> None:
        super().__init__(f"{provider} is unavailable: {detail}")
        self.provider = provider
        self.provider_status = provider_status
        self.retry_after = retry_after  # the provider's own, when it gave one

    @property
    def advised_wait(self) -> int:
        """What the caller is told to wait: the provider's Retry-After, else a default."""
        return self.retry_after or DEFAULT_RETRY_AFTER

    def body(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "provider": self.provider,
            "provider_status": self.provider_status,
            "retry_after": self.advised_wait,
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.advised_wait)}


class ProviderTimeout(RelayError):
    """The request went out but no answer came: the provider may have accepted it."""

    status, kind, reason = 504, "ambiguous", "timeout"

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(f"{provider} gave {detail}; the message may or may not have been sent")
        self.provider = provider

    def body(self) -> dict[str, Any]:
        # Only the HTTP caller gets this answer, and that path never resends.
        return {"message": self.message + ", so it was not resent", "provider": self.provider}


class OutOfTime(RelayError):
    """Too little of the Lambda's time was left to start a send."""

    status, kind, reason = 503, "transient", "out_of_time"

    def __init__(self) -> None:
        super().__init__("the invocation ran out of time before the send could start")


# The relay's own trouble.
class DependencyUnavailable(RelayError):
    """An AWS dependency (Secrets Manager) could not be reached; safe to retry later."""

    status, kind, reason = 503, "transient", "dependency_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class Misconfigured(RelayError):
    """The deployment is wrong (a secret's content, say); an operator must fix it."""

    status, kind, reason = 500, "internal", "misconfigured"
