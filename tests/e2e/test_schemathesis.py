"""docs/openapi.yaml against `make run`'s stack: schemathesis generates requests from the document.

Positive cases (bodies and headers the document allows), negative cases (bodies and headers it
does not) and unauthenticated cases all go over real HTTP to `python -m relay_local`, with a
bearer key and, as the `webhookSignature` scheme says, signed (Standard Webhooks) instead. Every
answer must be a documented status with a conforming JSON body and headers, and never a 5xx.
A generated message that is also valid for libphonenumber is delivered to the sandbox provider
(201) or queued (202): that is fine, the sandbox checks it against the provider's document.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests
import schemathesis
import urllib3
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.auth import TOLERANCE_SECONDS, sign
from relay_local.stack import DEV_API_KEY, DEV_SIGNING_SECRET
from tests.conftest import REPO
from tests.e2e import local_stack
from tests.property import examples
from tests.property.openapi import gateway_statuses

pytestmark = pytest.mark.slow

DOCUMENT = REPO / "docs" / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(DOCUMENT)
OPERATION = SCHEMA["/v1/messages"]["POST"]
AUTH = {"Authorization": f"Bearer {DEV_API_KEY}"}


def not_api_gateways_answer(ctx: Any, response: Any, case: Any) -> None:
    """status_code_conformance accepts every documented status, API Gateway's own among them
    (its 429 when throttled): from the relay, behind no gateway, such an answer is a departure."""
    assert response.status_code not in gateway_statuses(), (
        f"the relay answered {response.status_code}, a status only API Gateway gives"
    )


CONFORMANCE = [
    not_a_server_error,
    not_api_gateways_answer,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Bounded and reproducible: the same cases on every run, well under a minute in all.
BOUNDED = settings(
    max_examples=examples(60),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class WebhookSignature(requests.auth.AuthBase):
    """Sign the request as sent, by the document's `webhookSignature` scheme: `webhook-id`,
    `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
    with one of the stack's `signing_secrets` (`make run`'s, printed at start)."""

    def __init__(self, secret: str = DEV_SIGNING_SECRET, age: int = 0, tamper: bool = False):
        self.secret, self.age, self.tamper = secret, age, tamper

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):  # sent as these bytes, so that what is signed is what is sent
            body = body.encode("utf-8", "surrogatepass")
            request.body = body
            request.headers["Content-Length"] = str(len(body))
        msg_id = f"msg_{uuid.uuid4().hex}"  # a fresh one: an id reused for another body is 422
        timestamp = int(time.time()) - self.age
        signed = body + b" " if self.tamper else body
        request.headers["webhook-id"] = msg_id
        request.headers["webhook-timestamp"] = str(timestamp)
        request.headers["webhook-signature"] = sign(self.secret, msg_id, timestamp, signed)
        return request


FOREIGN_SECRET = "whsec_c29tZW9uZS1lbHNlcy1zaWduaW5nLXNlY3JldA=="
# How a request is signed; only the two in AUTHENTIC authenticate.
SIGNINGS = {
    "signed": WebhookSignature(),
    "signed, with a wrong bearer key too": WebhookSignature(),
    "signed 301 s ago": WebhookSignature(age=TOLERANCE_SECONDS + 1),
    # Well past the tolerance: one second past it is inside it again once the relay's clock
    # ticks over before it checks (a loaded machine; test_auth.py checks the boundary itself).
    "signed 330 s ahead": WebhookSignature(age=-TOLERANCE_SECONDS - 30),
    "signed with another secret": WebhookSignature(secret=FOREIGN_SECRET),
    "signed over another body": WebhookSignature(tamper=True),
}
AUTHENTIC = {"signed", "signed, with a wrong bearer key too"}
CREDENTIALS = {"authorization", "webhook-id", "webhook-timestamp", "webhook-signature"}


def signed(case, how: str) -> dict:
    """The transport arguments that sign ``case`` as ``how`` says, its own credentials gone."""
    for name in list(case.headers or {}):
        if name.lower() in CREDENTIALS:
            del case.headers[name]
    headers = {"Authorization": "Bearer not-a-key"} if "bearer" in how else None
    return {"auth": SIGNINGS[how], "headers": headers}


@pytest.fixture(scope="module")
def relay_url():
    """`python -m relay_local` as `make run` starts it, on ports it picks itself."""
    relay = local_stack.start()
    yield relay.url
    relay.stop()


def test_the_document_is_valid_openapi_3_1():
    import openapi_spec_validator as validator  # a dev dependency: never skipped

    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))

    validator.validate(document)

    # Its own examples are valid messages by its own schema.
    body = document["paths"]["/v1/messages"]["post"]["requestBody"]["content"]["application/json"]
    message = {**document["components"]["schemas"]["Message"], "components": document["components"]}
    check = OAS31Validator(message, format_checker=oas31_format_checker)
    for example in body["examples"].values():
        check.validate(example["value"])


@given(case=OPERATION.as_strategy())
@BOUNDED
def test_documented_requests_get_documented_answers(relay_url, case):
    response = case.call_and_validate(base_url=relay_url, headers=AUTH, checks=CONFORMANCE)

    event(f"status {response.status_code}")
    assert response.status_code in {201, 202, 409, 422}, response.text


def broken(case) -> set[str]:
    """What a negative case breaks, as Schemathesis records its mutations: each header by its
    lower-cased name, anything else by where it is ("body", "query", ...)."""
    data = case.meta.phase.data if case.meta else None
    return {
        mutation.parameter.lower()
        if mutation.parameter_location.value == "header" and mutation.parameter
        else mutation.parameter_location.value
        for mutation in getattr(data, "mutations", ())
    }


# Twice the cases: about half break Authorization (each 401), the rest the body and headers.
@given(case=OPERATION.as_strategy(generation_mode=GenerationMode.NEGATIVE))
@settings(BOUNDED, max_examples=examples(120))
def test_undocumented_requests_are_refused_as_documented(relay_url, case):
    # The test's key replaces the case's Authorization, unless that header is what the case
    # breaks: then it goes as generated, and its refusal (401) is what is tested.
    own_credentials = "authorization" in broken(case)
    response = case.call_and_validate(
        base_url=relay_url,
        headers=None if own_credentials else AUTH,
        checks=[*CONFORMANCE, negative_data_rejection],
    )

    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    if own_credentials:
        assert response.status_code == 401, response.text


@given(case=OPERATION.as_strategy())
@settings(BOUNDED, max_examples=examples(25))
def test_without_credentials_every_request_is_401(relay_url, case):
    for name in list(case.headers or {}):
        if name.lower() in ("authorization", "webhook-signature"):
            del case.headers[name]

    response = case.call_and_validate(base_url=relay_url, checks=CONFORMANCE)

    event(f"status {response.status_code}")
    assert response.status_code == 401, response.text
    assert response.json()["message"].startswith("not authenticated")
    [challenge] = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")


@pytest.mark.parametrize("how", list(SIGNINGS))
@given(case=OPERATION.as_strategy())
@settings(BOUNDED, max_examples=examples(10))
def test_signed_requests_get_documented_answers(relay_url, case, how):
    response = case.call_and_validate(base_url=relay_url, checks=CONFORMANCE, **signed(case, how))

    event(f"status {response.status_code}")
    if how in AUTHENTIC:
        assert response.status_code in {201, 202, 409, 422}, response.text
    else:
        assert response.status_code == 401, response.text
        assert response.json()["message"].startswith("not authenticated")


@pytest.mark.parametrize("how", sorted(AUTHENTIC))
@given(case=OPERATION.as_strategy(generation_mode=GenerationMode.NEGATIVE))
@settings(BOUNDED, max_examples=examples(15))
def test_signed_undocumented_requests_are_refused_as_documented(relay_url, case, how):
    # Signing replaces the case's credentials: a case that breaks only those would be sent
    # whole. The test above sends those as generated.
    assume(not broken(case) or not broken(case) <= CREDENTIALS)
    response = case.call_and_validate(
        base_url=relay_url, checks=[*CONFORMANCE, negative_data_rejection], **signed(case, how)
    )

    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    assert response.status_code != 401, response.text  # the signature held, whatever the body


def test_an_unknown_field_named_with_a_lone_surrogate_is_answered_422_over_http(relay_url):
    """The 422 names the field; written ASCII-escaped, the answer is valid UTF-8 on the wire."""
    http = urllib3.PoolManager(retries=False, timeout=10)
    body = b'{"provider": "fluents", "to": "+14155550123", "text": "hi", "\\ud800": 1}'

    answer = http.request(
        "POST",
        f"{relay_url}/v1/messages",
        body=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )

    assert answer.status == 422
    assert answer.json()["errors"]["\ud800"] == ["unknown field"]
