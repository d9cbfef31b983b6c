"""POST /v1/messages: authenticate, validate, then deliver now or (Prefer: respond-async) queue.

A send that got no answer is held (parked in the dead-letter queue) and answered 504, as a
failed one is, with "status": "held"; a repeat with its key gets the same answer, replayed.

One route, dispatched here: Powertools' APIGatewayHttpResolver would cost 68 more modules and
about 22 ms of cold start (its package imports every resolver; see docs/performance.md).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import correlation_paths

from relay import init_done
from relay.errors import ProviderTimeout, RelayError
from relay.intake import HttpRequest, prefers_async, read_message
from relay.observability import logger, metrics, outcomes, tracer
from relay.runtime import Relay
from relay.service import Held, Queued

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

relay = Relay.from_env()
service = relay.service()
ROUTE = ("POST", "/v1/messages")


def post_message(
    event: dict[str, Any], context: LambdaContext, state: dict[str, Any]
) -> dict[str, Any]:
    # The clock starts now: reading secrets counts against the time to answer.
    deadline = relay.deadline(context.get_remaining_time_in_millis())
    request = HttpRequest(
        headers={name.lower(): value for name, value in (event.get("headers") or {}).items()},
        body=event.get("body") or "",
        base64_encoded=bool(event.get("isBase64Encoded")),
    )
    incoming = read_message(request, relay.credentials, relay.defaults)
    message = incoming.message
    state["provider"] = message.provider  # for the metrics of a failure from here on
    outcome, replayed = service.accept(
        message,
        request.raw_body(),
        incoming.idempotency_key,
        deadline,
        queue=prefers_async(request.headers),
    )
    if replayed:
        outcomes.count("DuplicatesSuppressed", message.provider)
    if isinstance(outcome, Queued):
        if not replayed:
            outcomes.count("MessagesQueued", message.provider)
        headers = {"Preference-Applied": "respond-async"}
        return _json(202, {"id": outcome.relay_id, "status": "queued"}, headers, replayed)
    if isinstance(outcome, Held):  # no answer from the provider: parked, not to be resent
        if not replayed:
            outcomes.count("MessagesFailed", message.provider, ("Reason", ProviderTimeout.reason))
            logger.warning(
                "request failed",
                extra={"status": ProviderTimeout.status, "reason": ProviderTimeout.reason},
            )
        return _json(ProviderTimeout.status, outcome.answer(), replayed=replayed)
    answer: dict[str, Any] = {
        "id": outcome.relay_id,
        "status": "delivered",
        "provider": outcome.provider,
        "provider_status": outcome.provider_status,
        "attempts": outcome.attempts,
    }
    if outcome.receipt is not None:
        answer["provider_response"] = outcome.receipt
    return _json(201, answer, replayed=replayed)


def relay_error(error: RelayError, provider: str | None) -> dict[str, Any]:
    if error.status >= 500:  # the relay gave up on a message it had accepted to send
        outcomes.count("MessagesFailed", provider, ("Reason", error.reason))
        logger.warning("request failed", extra={"status": error.status, "reason": error.reason})
    else:  # refused before any send
        outcomes.count("RequestsRefused", provider, ("Reason", error.reason))
        logger.info("request refused", extra={"status": error.status, "reason": error.reason})
    return _json(error.status, error.answer(), error.headers())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    relay.idempotency.start_invocation(context)
    state: dict[str, Any] = {}
    try:
        if _route(event) != ROUTE:
            return _json(404, {"message": "not found: the relay serves POST /v1/messages"})
        return post_message(event, context, state)
    except RelayError as error:
        return relay_error(error, state.get("provider"))
    except Exception as error:
        # Log the type and where, not the message: an exception's text can carry request data.
        logger.error("unexpected error", extra={"error": type(error).__name__})
        outcomes.count("MessagesFailed", state.get("provider"), ("Reason", "internal"))
        return _json(500, {"message": "internal error"})
    finally:
        outcomes.flush()


def _route(event: dict[str, Any]) -> tuple[str | None, str]:
    """Method and path; a named stage's prefix comes off the path, as Powertools does."""
    context = event.get("requestContext") or {}
    path = event.get("rawPath") or ""
    stage = context.get("stage") or "$default"
    if stage != "$default":
        path = path.removeprefix(f"/{stage}")
    return (context.get("http") or {}).get("method"), path


def _json(
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    replayed: bool = False,
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return {
        "statusCode": status,
        "headers": headers,
        # ASCII-escaped: a 422 can name a caller's field, and a field name may be a lone
        # surrogate (legal as a JSON escape) that UTF-8 cannot carry.
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


init_done()  # last: the init is over (relay/__init__.py)
