"""The webhook handler end to end: HTTP API events in, spec-checked provider stand-ins out."""

from __future__ import annotations

import base64
import json
import time

import pytest

from relay.auth import sign
from relay.ids import is_uuid
from relay.runtime import AFTER_SEND_SECONDS
from relay_local.lambda_runtime import LambdaContext, load_function
from relay_local.sandbox import Fault
from tests.conftest import (
    API_KEY,
    AUTH_SECRET,
    SECOND_API_KEY,
    SECOND_SIGNING_SECRET,
    SIGNING_SECRET,
    TOKENS,
    TOKENS_SECRET,
    WORKSPACE,
    Webhook,
    bearer,
    fluents_message,
    lancepilot_message,
    load_event,
)
from tests.property.openapi import answer_problems


def signed(body: bytes, secret: str = SIGNING_SECRET, **overrides: str) -> dict[str, str]:
    msg_id, ts = "msg_2Lx1b9Yc0d", int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }
    headers.update(overrides)
    return headers


# --- delivered -------------------------------------------------------------------------------


def test_lancepilot_message_is_sent_as_the_document_says(webhook, lancepilot, fluents):
    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 201
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["status"] == "delivered"
    assert answer.json["provider"] == "lancepilot"
    assert answer.json["provider_status"] == 201
    assert answer.json["id"]
    [sent] = lancepilot.received
    assert sent.path.endswith(f"/workspaces/{WORKSPACE}/contacts/number/14155550123/messages/text")
    assert sent.headers["authorization"] == f"Bearer {TOKENS['lancepilot']}"
    assert sent.relay_id == answer.json["id"]  # X-Relay-Id: the id the caller was given
    assert sent.json == {"text": {"body": "Your order 1042 has shipped."}}
    assert fluents.received == []


def test_lancepilot_receipt_is_passed_back(webhook, lancepilot):
    lancepilot.enqueue(
        Fault.status(
            201,
            {
                "status": 201,
                "message": "Resource created successfully.",
                "data": {"id": "msg-42", "contact": "c-7"},
            },
        )
    )

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["provider_response"] == {"id": "msg-42", "contact": "c-7"}


def test_fluents_message_is_sent_and_its_empty_201_is_enough(webhook, fluents, lancepilot):
    answer = webhook.post(fluents_message(), headers=bearer())

    assert answer.status == 201
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["provider"] == "fluents"
    assert "provider_response" not in answer.json  # Fluents' 201 has no body
    [sent] = fluents.received
    assert sent.path == "/v1/messages"
    assert sent.headers["authorization"] == f"Bearer {TOKENS['fluents']}"
    assert sent.relay_id == answer.json["id"]
    assert sent.json == {
        "to_number": "+4915123456789",
        "from_number": "+12025550143",
        "message": "Your code is 913402",
    }
    assert lancepilot.received == []


def test_sample_events_deliver(webhook, lancepilot, fluents):
    for event, sandbox in (
        ("http_post_lancepilot.json", lancepilot),
        ("http_post_fluents.json", fluents),
    ):
        answer = webhook.post(event=event, headers=bearer())
        assert answer.status == 201, answer.json
        assert len(sandbox.accepted()) == 1


def test_deployment_defaults_fill_in_omitted_fields(relay_env, monkeypatch, lancepilot, fluents):
    monkeypatch.setenv("DEFAULT_PROVIDER", "fluents")
    monkeypatch.setenv("FLUENTS_FROM_NUMBER", "+12025550143")
    monkeypatch.setenv("LANCEPILOT_WORKSPACE_ID", WORKSPACE)
    webhook = Webhook(load_function("webhook"))

    to_fluents = webhook.post({"to": "+14155550123", "text": "hi"}, headers=bearer())
    to_lancepilot = webhook.post(
        {"provider": "lancepilot", "to": "+14155550123", "text": "hi"}, headers=bearer()
    )

    assert (to_fluents.status, to_lancepilot.status) == (201, 201)
    assert fluents.received[0].json["from_number"] == "+12025550143"
    assert f"/workspaces/{WORKSPACE}/" in lancepilot.received[0].path


def test_base64_body_is_accepted(webhook, lancepilot):
    answer = webhook.post(lancepilot_message(), headers=bearer(), base64_body=True)

    assert answer.status == 201
    assert len(lancepilot.accepted()) == 1


def test_respond_async_is_queued_as_the_document_says(webhook, lancepilot):
    answer = webhook.post(lancepilot_message(), headers={**bearer(), "prefer": "respond-async"})

    assert answer.status == 202
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["status"] == "queued"
    assert lancepilot.received == []


def test_unicode_text_arrives_intact(webhook, lancepilot):
    text = "Olá 👋 — ваш заказ 已发货"
    answer = webhook.post(lancepilot_message(text=text), headers=bearer(), base64_body=True)

    assert answer.status == 201
    assert lancepilot.received[0].json == {"text": {"body": text}}


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [API_KEY, SECOND_API_KEY])
def test_every_configured_api_key_works(webhook, lancepilot, key):
    assert webhook.post(lancepilot_message(), headers=bearer(key)).status == 201


@pytest.mark.parametrize("secret", [SIGNING_SECRET, SECOND_SIGNING_SECRET])
def test_standard_webhooks_signature_with_any_current_secret(webhook, lancepilot, secret):
    body = json.dumps(lancepilot_message()).encode()

    answer = webhook.post(raw=body, headers=signed(body, secret))

    assert answer.status == 201


def test_signature_over_a_base64_body_checks_the_decoded_bytes(webhook, lancepilot):
    body = json.dumps(lancepilot_message()).encode()

    answer = webhook.post(raw=body, headers=signed(body), base64_body=True)

    assert answer.status == 201


UNAUTHENTICATED = {
    "no credentials": {"content-type": "application/json"},
    "unknown key": bearer("not-a-key"),
    "empty bearer": {"authorization": "Bearer "},
    "bare scheme": {"authorization": "Bearer"},
    "basic scheme": {"authorization": "Basic " + base64.b64encode(b"u:p").decode()},
    "garbage header": {"authorization": "\x00\x01 ☃"},
    "key with a prefix": bearer("x" + API_KEY),
}


@pytest.mark.parametrize("headers", UNAUTHENTICATED.values(), ids=UNAUTHENTICATED.keys())
def test_unauthenticated_requests_get_401_and_send_nothing(webhook, lancepilot, headers):
    answer = webhook.post(lancepilot_message(), headers=headers)

    assert answer.status == 401
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert "authenticated" in answer.json["message"]
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert lancepilot.received == []


def _bad_signatures(body: bytes) -> dict[str, dict[str, str]]:
    ok = signed(body)
    old = int(time.time()) - 301
    return {
        "wrong secret": signed(body, "whsec_" + base64.b64encode(b"someone-else").decode()),
        "other body": signed(b'{"provider": "lancepilot"}'),
        "stale timestamp": signed(
            body,
            **{
                "webhook-timestamp": str(old),
                "webhook-signature": sign(SIGNING_SECRET, "msg_2Lx1b9Yc0d", old, body),
            },
        ),
        "future timestamp": {**ok, "webhook-timestamp": str(int(time.time()) + 301)},
        "timestamp not a number": {**ok, "webhook-timestamp": "yesterday"},
        "missing id": {k: v for k, v in ok.items() if k != "webhook-id"},
        "other id": {**ok, "webhook-id": "msg_other"},
        "unknown version": {**ok, "webhook-signature": "v2," + ok["webhook-signature"][3:]},
        "not base64": {**ok, "webhook-signature": "v1,%%%"},
        "empty": {**ok, "webhook-signature": ""},
    }


@pytest.mark.parametrize("case", list(_bad_signatures(b"{}")), ids=list(_bad_signatures(b"{}")))
def test_bad_signatures_get_401_and_send_nothing(webhook, lancepilot, case):
    body = json.dumps(lancepilot_message()).encode()

    answer = webhook.post(raw=body, headers=_bad_signatures(body)[case])

    assert answer.status == 401
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert lancepilot.received == []


def test_one_good_signature_among_several_is_enough(webhook, lancepilot):
    body = json.dumps(lancepilot_message()).encode()
    headers = signed(body)
    headers["webhook-signature"] = "v1,bm9wZQ== " + headers["webhook-signature"]

    assert webhook.post(raw=body, headers=headers).status == 201


# --- the relay's own refusals, in order --------------------------------------------------------


def test_oversized_body_gets_413_before_authentication(webhook, lancepilot):
    body = json.dumps(lancepilot_message(text="x" * 70_000)).encode()

    answer = webhook.post(raw=body, headers={"content-type": "application/json"})

    assert answer.status == 413
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert lancepilot.received == []


def test_unauthenticated_caller_learns_nothing_about_the_body(webhook):
    answer = webhook.post(raw=b"{not json", headers={"content-type": "text/plain"})

    assert answer.status == 401
    assert answer_problems(answer.status, answer.headers, answer.json) == []


def test_body_size_limit_is_64_kib_exactly(webhook, lancepilot):
    def body_of(size: int) -> bytes:
        envelope = json.dumps(lancepilot_message(text="")).encode()
        return json.dumps(lancepilot_message(text="x" * (size - len(envelope)))).encode()

    at_limit = webhook.post(raw=body_of(65_536), headers=bearer())
    over = webhook.post(raw=body_of(65_537), headers=bearer())

    assert at_limit.status == 422  # read and judged: the text is too long
    assert over.status == 413
    assert answer_problems(at_limit.status, at_limit.headers, at_limit.json) == []
    assert answer_problems(over.status, over.headers, over.json) == []
    assert lancepilot.received == []


def test_bad_base64_is_400_only_for_an_authenticated_caller(webhook, lancepilot):
    event = load_event("http_post_lancepilot.json")
    for headers, status in (({"content-type": "application/json"}, 401), (bearer(), 400)):
        event.update(body="not base64 at all!", isBase64Encoded=True, headers=headers)
        result = webhook.module.lambda_handler(event, LambdaContext())
        assert result["statusCode"] == status
        answer_headers = {k.lower(): v for k, v in result["headers"].items()}
        assert answer_problems(status, answer_headers, json.loads(result["body"])) == []
    assert lancepilot.received == []


def test_lone_surrogate_in_text_is_422(webhook, lancepilot):
    raw = json.dumps(lancepilot_message(text="\ud800")).encode()  # JSON allows "\ud800"
    assert b"\\ud800" in raw

    answer = webhook.post(raw=raw, headers=bearer())

    assert answer.status == 422
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["errors"] == {"text": ["must be valid Unicode text"]}
    assert lancepilot.received == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_non_json_content_type_gets_415(webhook, lancepilot, content_type):
    answer = webhook.post(lancepilot_message(), headers={**bearer(), "content-type": content_type})

    assert answer.status == 415
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert lancepilot.received == []


@pytest.mark.parametrize(
    "content_type", [None, "application/json; charset=UTF-8", "application/vnd.relay+json"]
)
def test_json_content_types_and_none_are_read_as_json(webhook, lancepilot, content_type):
    headers = {"authorization": f"Bearer {API_KEY}"}
    if content_type:
        headers["content-type"] = content_type

    assert webhook.post(lancepilot_message(), headers=headers).status == 201


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"text"', b"", b'{"a": NaN}', b"\xff\xfe{}", b"null"],
    ids=["broken", "array", "string", "empty", "nan", "not utf-8", "null"],
)
def test_malformed_bodies_get_400(webhook, lancepilot, raw):
    answer = webhook.post(raw=raw, headers=bearer(), base64_body=True)

    assert answer.status == 400
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["message"]
    assert lancepilot.received == []


def test_invalid_message_gets_422_naming_every_bad_field(webhook, fluents):
    answer = webhook.post(event="http_post_invalid.json", headers=bearer())

    assert answer.status == 422
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert set(answer.json["errors"]) == {"to", "text", "workspace", "from", "colour"}
    assert answer.json["errors"]["colour"] == ["unknown field"]
    assert answer.json["errors"]["workspace"] == ["does not apply to provider fluents"]
    assert fluents.received == []


def test_unknown_route_is_404(webhook):
    ev_answer = webhook.module.lambda_handler(
        {
            **_event("http_post_lancepilot.json"),
            "rawPath": "/v1/other",
            "routeKey": "POST /v1/other",
            "requestContext": {
                **_event("http_post_lancepilot.json")["requestContext"],
                "http": {"method": "POST", "path": "/v1/other"},
            },
        },
        LambdaContext(),
    )
    assert ev_answer["statusCode"] == 404


def test_a_named_stage_prefix_is_not_part_of_the_route(webhook, lancepilot):
    event = _event("http_post_lancepilot.json")
    event["headers"].update(bearer())
    event["rawPath"] = "/prod/v1/messages"
    event["requestContext"] = {**event["requestContext"], "stage": "prod"}

    answer = webhook.module.lambda_handler(event, LambdaContext())

    assert answer["statusCode"] == 201
    assert len(lancepilot.accepted()) == 1


def test_another_method_on_the_route_is_404(webhook, lancepilot):
    event = _event("http_post_lancepilot.json")
    event["headers"].update(bearer())
    event["requestContext"] = {
        **event["requestContext"],
        "http": {**event["requestContext"]["http"], "method": "GET"},
    }

    answer = webhook.module.lambda_handler(event, LambdaContext())

    assert answer["statusCode"] == 404
    assert lancepilot.received == []


def _event(name):
    return load_event(name)


# --- the provider's answers ------------------------------------------------------------------


def test_provider_refusal_is_502_with_its_status_and_text_and_not_retried(webhook, lancepilot):
    lancepilot.enqueue(
        Fault.status(422, {"message": "Validation error", "errors": {"number": ["not on it"]}})
    )

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 502
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["provider_status"] == 422
    assert answer.json["provider_error"]["errors"] == {"number": ["not on it"]}
    assert answer.json["id"]
    assert len(lancepilot.received) == 1


def test_wrong_provider_token_is_a_502_naming_the_providers_401(webhook, aws, lancepilot):
    aws.secrets.put_secret_value(
        SecretId="webhook-relay/provider-tokens",
        SecretString=json.dumps({"lancepilot": "stale", "fluents": "stale"}),
    )

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 502
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["provider_status"] == 401
    assert answer.json["provider_error"] == {"message": "Unauthenticated."}
    lancepilot.reset()  # the stand-in rightly recorded the bad token as a violation


def test_fluents_400_is_passed_on(webhook, fluents):
    fluents.enqueue(
        Fault.status(
            400, {"message": "to_number is invalid", "error": "Bad Request", "statusCode": 400}
        )
    )

    answer = webhook.post(fluents_message(), headers=bearer())

    assert (answer.status, answer.json["provider_status"]) == (502, 400)
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["provider_error"]["message"] == "to_number is invalid"


def test_transient_failures_are_retried_until_delivered(webhook, lancepilot):
    lancepilot.enqueue(Fault.status(503), Fault.status(500), Fault.status(429))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 201
    assert answer.json["attempts"] == 4
    assert len(lancepilot.accepted()) == 1


def test_408_is_retried(webhook, fluents):
    fluents.enqueue(Fault.status(408))

    answer = webhook.post(fluents_message(), headers=bearer())

    assert (answer.status, answer.json["attempts"]) == (201, 2)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_every_provider_4xx_is_a_final_502(webhook, fluents, status):
    fluents.enqueue(Fault.status(status, {"message": "no", "error": "x", "statusCode": status}))

    answer = webhook.post(fluents_message(), headers=bearer())

    assert (answer.status, answer.json["provider_status"]) == (502, status)
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert len(fluents.received) == 1


def test_retry_after_as_an_http_date_is_honoured(webhook, lancepilot):
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    lancepilot.enqueue(Fault.status(503, retry_after=when))

    started = time.monotonic()
    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 201
    assert time.monotonic() - started >= 0.5
    assert len(lancepilot.received) == 2


@pytest.mark.parametrize("value", ["soon", "Wed, 21 Oct 99999 07:28:00 GMT", "-5", "1e309"])
def test_unreadable_retry_after_falls_back_to_backoff(webhook, lancepilot, value):
    lancepilot.enqueue(Fault.status(503, retry_after=value))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert (answer.status, answer.json["attempts"]) == (201, 2)


def test_unreadable_retry_after_on_the_final_answer_gets_the_default(webhook, lancepilot):
    lancepilot.set_default(Fault.status(503, retry_after="Wed, 21 Oct 99999 07:28:00 GMT"))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 503
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.headers["retry-after"] == "10"


def test_retry_after_is_honoured(webhook, lancepilot):
    lancepilot.enqueue(Fault.status(429, retry_after="1"))

    started = time.monotonic()
    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 201
    assert time.monotonic() - started >= 1.0
    assert len(lancepilot.received) == 2


def test_provider_that_stays_down_gets_503_with_retry_after(webhook, lancepilot):
    lancepilot.set_default(Fault.status(502))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 503
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["provider_status"] == 502
    assert int(answer.headers["retry-after"]) >= 1
    assert len(lancepilot.received) == 4  # MAX_SEND_ATTEMPTS' default


def test_retry_after_beyond_the_budget_is_passed_to_the_caller_at_once(webhook, lancepilot):
    lancepilot.set_default(Fault.status(503, retry_after="120"))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 503
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.headers["retry-after"] == "120"
    assert len(lancepilot.received) == 1


def test_unreachable_provider_is_503(relay_env, monkeypatch, lancepilot):
    monkeypatch.setenv("LANCEPILOT_API_URL", "http://127.0.0.1:9/api/v3")  # discard port: refused
    webhook = Webhook(load_function("webhook"))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 503
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["message"] == "lancepilot is unavailable: could not connect"
    assert "retry-after" in answer.headers


def test_hanging_provider_gets_504_and_is_not_resent(webhook, lancepilot):
    lancepilot.enqueue(Fault.hang(1.5))

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 504
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert answer.json["message"].startswith("lancepilot gave no answer in time")
    assert "may or may not" in answer.json["message"]
    assert answer.json["status"] == "held"  # parked for review (tests/integration/test_held.py)
    assert len(lancepilot.received) == 1


@pytest.mark.parametrize(
    "fault",
    [Fault.reset_after_read(), Fault.reset_before_read()],
    ids=["after read", "before read"],
)
def test_dropped_connection_is_ambiguous_504_and_not_resent(webhook, lancepilot, fault):
    # The relay cannot tell a reset before the provider read the request from one after it.
    lancepilot.enqueue(fault)

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 504
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert "connection dropped" in answer.json["message"]
    assert lancepilot.accepted() == []
    assert len(lancepilot.received) <= 1


def test_a_keyed_retry_of_a_504_gets_the_504_again_and_is_not_resent(webhook, lancepilot):
    # The 504's message is held (parked for review), and its record answers the retry.
    lancepilot.enqueue(Fault.reset_after_read())
    body = lancepilot_message(idempotency_key="k-in-doubt")

    in_doubt = webhook.post(body, headers=bearer())
    retried = webhook.post(body, headers=bearer())

    assert (in_doubt.status, retried.status) == (504, 504)
    assert retried.json == in_doubt.json
    assert retried.headers["idempotent-replayed"] == "true"
    assert answer_problems(in_doubt.status, in_doubt.headers, in_doubt.json) == []
    assert answer_problems(retried.status, retried.headers, retried.json) == []
    assert is_uuid(retried.json["id"])
    assert len(lancepilot.received) == 1


def test_unkeyed_messages_get_a_fresh_uuid_each(webhook, lancepilot):
    ids = {webhook.post(lancepilot_message(), headers=bearer()).json["id"] for _ in range(3)}

    assert len(ids) == 3
    assert all(is_uuid(relay_id) for relay_id in ids)


def test_a_dripping_answer_cannot_hold_the_relay_past_its_deadline(webhook, lancepilot):
    lancepilot.enqueue(Fault.drip(0.2))  # ~100 bytes: 20 s at this pace; the budget is 5 s

    started = time.monotonic()
    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 201  # the status line said accepted; the body is only detail
    assert time.monotonic() - started < 6


def test_non_json_success_body_is_still_delivered(webhook, lancepilot):
    lancepilot.enqueue(Fault.garbage_body())

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 201
    assert "provider_response" not in answer.json


def test_every_answer_comes_within_the_lambdas_remaining_time(webhook, lancepilot):
    lancepilot.set_default(Fault.status(503, retry_after="1"))

    # 3 s to send: what is left of the Lambda's time once AFTER_SEND_SECONDS is kept back.
    started = time.monotonic()
    answer = webhook.post(
        lancepilot_message(),
        headers=bearer(),
        context=LambdaContext(timeout_s=AFTER_SEND_SECONDS + 3.0),
    )

    assert answer.status == 503
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert len(lancepilot.received) >= 2  # retried after the Retry-After, while time was left
    assert time.monotonic() - started < 3.0


# --- the relay's own dependencies ----------------------------------------------------------


def test_unreadable_auth_secret_fails_closed_with_503(webhook, aws, lancepilot):
    aws.secrets.delete_secret(SecretId="webhook-relay/auth", ForceDeleteWithoutRecovery=True)

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 503
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert lancepilot.received == []


def test_malformed_auth_secret_fails_closed_with_500(webhook, aws, lancepilot):
    aws.secrets.put_secret_value(SecretId="webhook-relay/auth", SecretString='{"api_keys": "one"}')

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 500
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert "auth secret" in answer.json["message"]
    assert lancepilot.received == []


def test_a_binary_auth_secret_fails_closed_with_500_not_a_retry(webhook, aws, lancepilot):
    aws.secrets.put_secret_value(SecretId=AUTH_SECRET, SecretBinary=b'{"api_keys": []}')

    answer = webhook.post(lancepilot_message(), headers=bearer())

    assert answer.status == 500  # an operator must fix it: a 503 would invite futile retries
    assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert "retry-after" not in answer.headers
    assert answer.json["message"] == "a relay secret holds no text"
    assert lancepilot.received == []


def test_a_secret_holding_null_is_cached_like_any_other(relay_env, aws, lancepilot, secret_reads):
    aws.secrets.put_secret_value(SecretId=AUTH_SECRET, SecretString="null")
    webhook = Webhook(load_function("webhook"))

    answers = [webhook.post(lancepilot_message(), headers=bearer()) for _ in range(3)]

    assert [a.status for a in answers] == [500, 500, 500]
    for answer in answers:
        assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert secret_reads.asked == [AUTH_SECRET]


def test_after_a_failed_secret_read_the_relay_holds_off_then_asks_again(
    relay_env, monkeypatch, lancepilot, secret_reads
):
    monkeypatch.setattr("relay.secrets.FAILURE_HOLD_SECONDS", 1.0)  # the posts take milliseconds
    webhook = Webhook(load_function("webhook"))
    secret_reads.down = True

    during = [webhook.post(lancepilot_message(), headers=bearer()) for _ in range(3)]
    secret_reads.down = False
    held = webhook.post(lancepilot_message(), headers=bearer())
    time.sleep(1.05)
    after = webhook.post(lancepilot_message(), headers=bearer())

    assert [a.status for a in during] == [503, 503, 503]
    assert held.status == 503
    assert held.headers["retry-after"] == "5"
    for answer in [*during, held]:
        assert answer_problems(answer.status, answer.headers, answer.json) == []
    assert after.status == 201
    assert secret_reads.asked == [AUTH_SECRET, AUTH_SECRET, TOKENS_SECRET]
    assert len(lancepilot.received) == 1


def test_secrets_are_cached_across_invocations(webhook, aws, lancepilot):
    assert webhook.post(lancepilot_message(), headers=bearer()).status == 201
    aws.secrets.delete_secret(SecretId="webhook-relay/auth", ForceDeleteWithoutRecovery=True)
    aws.secrets.delete_secret(
        SecretId="webhook-relay/provider-tokens", ForceDeleteWithoutRecovery=True
    )

    assert webhook.post(lancepilot_message(), headers=bearer()).status == 201
