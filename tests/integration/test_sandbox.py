"""The provider stand-ins, exercised over real HTTP with urllib3."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import urllib3
import yaml
from openapi_schema_validator import OAS30Validator, OAS31Validator
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from relay_local.sandbox import SPEC_DIR, SPEC_FILES, Fault, ProviderSandbox, Received

if TYPE_CHECKING:
    from collections.abc import Iterator

TOKEN = "sandbox-test-token"
WORKSPACE = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
NUMBER = "14155550123"
SMS = {"to_number": "+14155550123", "from_number": "+14155550100", "message": "Hello"}
WHATSAPP = {"text": {"body": "Hello"}}
SHARED_SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "specs"


# --- the spec's response schemas, read independently of the module under test --------------------


@functools.cache
def response_validator(provider: str, status: int) -> Any:
    """Validator for the documented JSON body of ``status``; None when the spec documents none."""
    doc = yaml.safe_load((SPEC_DIR / SPEC_FILES[provider]).read_text(encoding="utf-8"))
    (path_item,) = doc["paths"].values()
    response = path_item["post"]["responses"][str(status)]
    if "$ref" in response:
        target = doc
        for key in response["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        response = target
    if "content" not in response:
        return None
    schema = {**response["content"]["application/json"]["schema"], "components": doc["components"]}
    return (OAS31Validator if doc["openapi"].startswith("3.1") else OAS30Validator)(schema)


def assert_documented(provider: str, response: urllib3.BaseHTTPResponse) -> Any:
    """The answer's body validates against the spec's schema for its status; returns it parsed."""
    validator = response_validator(provider, response.status)
    if validator is None:
        assert response.data == b""
        assert response.headers["Content-Length"] == "0"
        return None
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.data)
    validator.validate(body)
    return body


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def lancepilot() -> Iterator[ProviderSandbox]:
    with ProviderSandbox("lancepilot", TOKEN) as sandbox:
        yield sandbox


@pytest.fixture
def fluents() -> Iterator[ProviderSandbox]:
    with ProviderSandbox("fluents", TOKEN) as sandbox:
        yield sandbox


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1, read=2))
    yield pool
    pool.clear()


def lancepilot_url(
    sandbox: ProviderSandbox, workspace: str = WORKSPACE, number: str = NUMBER
) -> str:
    return f"{sandbox.base_url}/workspaces/{workspace}/contacts/number/{number}/messages/text"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def send(
    http: urllib3.PoolManager, sandbox: ProviderSandbox, payload: Any = None, **kwargs: Any
) -> urllib3.BaseHTTPResponse:
    """POST a valid message (or ``payload``) to the sandbox's documented endpoint."""
    if sandbox.provider == "lancepilot":
        url, default = lancepilot_url(sandbox), WHATSAPP
    else:
        url, default = f"{sandbox.base_url}/v1/messages", SMS
    kwargs.setdefault("headers", auth())
    return http.request("POST", url, json=default if payload is None else payload, **kwargs)


@pytest.fixture(params=["lancepilot", "fluents"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[ProviderSandbox]:
    with ProviderSandbox(request.param, TOKEN) as running:
        yield running


# --- valid requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [NUMBER, "447700900123", "12345678", "123456789012345"])
def test_lancepilot_accepts_a_valid_message(lancepilot, http, number):
    response = http.request(
        "POST", lancepilot_url(lancepilot, number=number), json=WHATSAPP, headers=auth()
    )

    assert response.status == 201
    body = assert_documented("lancepilot", response)
    assert body["status"] == 201
    assert body["message"] == "Resource created successfully."
    assert body["data"]["id"]
    (seen,) = lancepilot.accepted()
    assert seen.method == "POST"
    assert seen.path == f"/api/v3/workspaces/{WORKSPACE}/contacts/number/{number}/messages/text"
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.json == WHATSAPP
    assert json.loads(seen.body) == WHATSAPP
    assert seen.violations == ()
    assert seen.answered == 201
    assert lancepilot.violations() == []


def test_fluents_accepts_a_valid_message_with_an_empty_201(fluents, http):
    response = send(http, fluents)

    assert response.status == 201
    assert assert_documented("fluents", response) is None
    (seen,) = fluents.accepted()
    assert seen.json == SMS
    assert seen.violations == ()
    assert fluents.base_url.count("/") == 2  # no path prefix


def test_base_url_prefix_comes_from_the_spec_and_can_be_overridden(http):
    with ProviderSandbox("lancepilot", TOKEN) as default:
        assert default.base_url.endswith("/api/v3")
    with ProviderSandbox("lancepilot", TOKEN, prefix="custom/v9/") as custom:
        assert custom.base_url.endswith("/custom/v9")
        assert send(http, custom).status == 201
        wrong = lancepilot_url(custom).replace("/custom/v9", "/api/v3")
        assert http.request("POST", wrong, json=WHATSAPP, headers=auth()).status == 404
    with ProviderSandbox("lancepilot", TOKEN, prefix="") as bare:
        assert bare.base_url.count("/") == 2
        assert send(http, bare).status == 201


def test_base_url_needs_a_running_sandbox():
    with pytest.raises(RuntimeError):
        _ = ProviderSandbox("fluents", TOKEN).base_url


def test_chunked_request_bodies_are_read(lancepilot, http):
    chunks = iter([b'{"text": ', b'{"body": "chunked"}}'])
    response = http.request(
        "POST",
        lancepilot_url(lancepilot),
        body=chunks,
        chunked=True,
        headers={**auth(), "Content-Type": "application/json"},
    )

    assert response.status == 201
    assert lancepilot.received[0].json == {"text": {"body": "chunked"}}


# --- documented errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong"), {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
    ids=["missing", "wrong-token", "basic", "no-scheme"],
)
def test_missing_or_wrong_bearer_is_401(sandbox, http, headers):
    response = send(http, sandbox, headers=headers)

    assert response.status == 401
    if sandbox.provider == "lancepilot":
        assert assert_documented("lancepilot", response) == {"message": "Unauthenticated."}
    else:  # not in the Fluents spec: NestJS's shape
        assert json.loads(response.data) == {"message": "Unauthorized", "statusCode": 401}
    (seen,) = sandbox.received
    assert seen.answered == 401
    assert len(seen.violations) == 1
    assert "Authorization" in seen.violations[0] or "bearer" in seen.violations[0]
    assert sandbox.accepted() == []


@pytest.mark.parametrize("path", ["/v1/message", "/v2/messages", "/v1/messages/extra", "/"])
def test_fluents_unknown_path_is_404(fluents, http, path):
    response = http.request("POST", fluents.base_url + path, json=SMS, headers=auth())

    assert response.status == 404
    body = assert_documented("fluents", response)
    assert body["error"] == "Not Found"
    assert body["message"] == f"Cannot POST {path}"
    assert "no such path" in fluents.violations()[0]


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v2/workspaces/{WORKSPACE}/contacts/number/{NUMBER}/messages/text",
        f"/api/v3/workspaces/{WORKSPACE}/contacts/number/{NUMBER}/messages/template",
        f"/api/v3/workspaces/{WORKSPACE}/contacts/{NUMBER}/messages/text",
        f"/api/v3/workspaces/{WORKSPACE}/contacts/number//messages/text",
    ],
)
def test_lancepilot_unknown_path_is_404(lancepilot, http, path):
    host = lancepilot.base_url.removesuffix("/api/v3")
    response = http.request("POST", host + path, json=WHATSAPP, headers=auth())

    assert response.status == 404
    assert assert_documented("lancepilot", response) == {
        "message": "Resource not found.",
        "status": 404,
    }
    assert len(lancepilot.violations()) == 1


def test_wrong_method(lancepilot, fluents, http):
    response = http.request("GET", lancepilot_url(lancepilot), headers=auth())
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert "method not in the spec" in lancepilot.violations()[0]

    response = http.request("PUT", f"{fluents.base_url}/v1/messages", json=SMS, headers=auth())
    assert response.status == 404  # NestJS: no route for PUT
    assert assert_documented("fluents", response)["message"] == "Cannot PUT /v1/messages"
    assert "method not in the spec" in fluents.violations()[0]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "text"),
        ({"text": {}}, "text.body"),
        ({"text": {"body": 5}}, "text.body"),
        ({"text": "Hello"}, "text"),
        ({"text": {"body": None}}, "text.body"),
        ([], "body"),
    ],
)
def test_lancepilot_invalid_body_is_422_naming_the_field(lancepilot, http, payload, field):
    response = send(http, lancepilot, payload)

    assert response.status == 422
    body = assert_documented("lancepilot", response)
    assert body["message"] == "Validation error"
    assert list(body["errors"]) == [field]
    (seen,) = lancepilot.received
    assert seen.answered == 422
    assert seen.violations
    assert all(field in violation for violation in seen.violations)


@pytest.mark.parametrize(
    ("workspace", "number", "field"),
    [
        (WORKSPACE, "+14155550123", "number"),
        (WORKSPACE, "%2B14155550123", "number"),
        (WORKSPACE, "1234567", "number"),
        (WORKSPACE, "1234567890123456", "number"),
        (WORKSPACE, "1415-555-0123", "number"),
        (WORKSPACE, WORKSPACE, "number"),
        ("my-workspace", NUMBER, "workspace"),
        ("3fa85f645717", NUMBER, "workspace"),
    ],
)
def test_lancepilot_invalid_path_parameter_is_a_violation(
    lancepilot, http, workspace, number, field
):
    url = lancepilot_url(lancepilot, workspace=workspace, number=number)
    response = http.request("POST", url, json=WHATSAPP, headers=auth())

    assert response.status == 422
    assert list(assert_documented("lancepilot", response)["errors"]) == [field]
    (violation,) = lancepilot.violations()
    assert f"The {field} field is invalid" in violation
    assert lancepilot.accepted() == []


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({k: v for k, v in SMS.items() if k != "message"}, ["message"]),
        ({}, ["to_number", "from_number", "message"]),
        ({**SMS, "to_number": 14155550123}, ["to_number"]),
        ({**SMS, "message": None, "from_number": ["+1"]}, ["from_number", "message"]),
        ("hello", ["body"]),
    ],
)
def test_fluents_invalid_body_is_400(fluents, http, payload, fields):
    response = send(http, fluents, payload)

    assert response.status == 400
    body = assert_documented("fluents", response)
    assert body["error"] == "Bad Request"
    assert body["statusCode"] == 400
    violations = fluents.violations()
    assert {violation.split(": ")[2].split()[1] for violation in violations} == set(fields)
    for field in fields:
        assert field in body["message"]
        assert any(f"The {field} field" in violation for violation in violations)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"text": {"body": "Hello"', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"", "application/json"),
        (json.dumps(WHATSAPP).encode(), "text/plain"),
        (json.dumps(WHATSAPP).encode(), None),
        (b"to_number=1", "application/x-www-form-urlencoded"),
    ],
    ids=["truncated", "not-utf8", "empty", "text-plain", "no-type", "form"],
)
def test_unusable_body_is_a_validation_error(sandbox, http, body, content_type):
    headers = auth() if content_type is None else {**auth(), "Content-Type": content_type}
    url = (
        lancepilot_url(sandbox)
        if sandbox.provider == "lancepilot"
        else f"{sandbox.base_url}/v1/messages"
    )
    response = http.request("POST", url, body=body, headers=headers)

    expected = 422 if sandbox.provider == "lancepilot" else 400
    assert response.status == expected
    assert_documented(sandbox.provider, response)
    (violation,) = sandbox.violations()
    assert "body" in violation
    assert sandbox.received[0].body == body


def test_charset_parameter_on_json_content_type_is_fine(fluents, http):
    response = http.request(
        "POST",
        f"{fluents.base_url}/v1/messages",
        body=json.dumps(SMS).encode(),
        headers={**auth(), "Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status == 201
    assert fluents.violations() == []


# --- faults --------------------------------------------------------------------------------------


def test_status_fault_with_retry_after_then_normal(sandbox, http):
    sandbox.enqueue(
        Fault.status(429, {"message": "Too Many Attempts."}, retry_after="7"),
        Fault.status(503, b"upstream down", headers={"X-Extra": "1"}),
        Fault.status(500),
    )

    first, second, third, fourth = (send(http, sandbox) for _ in range(4))

    assert first.status == 429
    assert first.headers["Retry-After"] == "7"
    assert json.loads(first.data) == {"message": "Too Many Attempts."}
    assert second.status == 503
    assert second.data == b"upstream down"
    assert second.headers["X-Extra"] == "1"
    assert "Retry-After" not in second.headers
    assert third.status == 500
    assert third.data == b""
    assert fourth.status == 201
    assert [r.answered for r in sandbox.received] == [429, 503, 500, 201]
    assert sandbox.violations() == []  # the requests themselves were valid
    assert len(sandbox.accepted()) == 1


def test_status_fault_still_records_violations(lancepilot, http):
    lancepilot.enqueue(Fault.status(500))

    response = send(http, lancepilot, {"text": {}}, headers={})

    assert response.status == 500
    assert len(lancepilot.violations()) == 2  # no token, text.body missing


def test_default_fault_applies_while_the_queue_is_empty(fluents, http):
    fluents.set_default(Fault.status(503, retry_after="1"))
    fluents.enqueue(Fault.status(429))

    statuses = [send(http, fluents).status for _ in range(3)]
    fluents.set_default(None)
    statuses.append(send(http, fluents).status)

    assert statuses == [429, 503, 503, 201]


def test_hang_triggers_a_client_read_timeout(sandbox, http):
    sandbox.enqueue(Fault.hang(10))

    with pytest.raises(ReadTimeoutError):
        send(http, sandbox, timeout=urllib3.Timeout(connect=1, read=0.2))

    (seen,) = sandbox.received
    assert seen.answered is None
    assert seen.violations == ()
    assert sandbox.accepted() == []
    assert send(http, sandbox).status == 201  # other connections are not blocked


def test_short_hang_then_normal_answer(fluents, http):
    fluents.enqueue(Fault.hang(0.1))

    assert send(http, fluents).status == 201


def test_stop_does_not_wait_for_hung_requests(http):
    sandbox = ProviderSandbox("fluents", TOKEN).start()
    sandbox.enqueue(Fault.hang(30))
    with pytest.raises(ReadTimeoutError):
        send(http, sandbox, timeout=urllib3.Timeout(connect=1, read=0.1))

    started = time.monotonic()
    sandbox.stop()

    assert time.monotonic() - started < 1


def test_slow_answers_late_but_normally(sandbox, http):
    sandbox.enqueue(Fault.slow(0.2))

    started = time.monotonic()
    response = send(http, sandbox)

    assert time.monotonic() - started >= 0.2
    assert response.status == 201
    assert sandbox.received[0].answered == 201


def test_latency_delays_every_normal_answer(http):
    with ProviderSandbox("fluents", TOKEN, latency=0.1) as sandbox:
        started = time.monotonic()
        assert send(http, sandbox).status == 201
        assert send(http, sandbox).status == 201
        assert time.monotonic() - started >= 0.2


def test_reset_before_read(sandbox, http):
    sandbox.enqueue(Fault.reset_before_read())

    with pytest.raises(ProtocolError):
        send(http, sandbox)

    assert sandbox.received == []
    assert send(http, sandbox).status == 201


def test_reset_after_read_records_the_request(sandbox, http):
    sandbox.enqueue(Fault.reset_after_read())

    with pytest.raises(ProtocolError):
        send(http, sandbox)

    (seen,) = sandbox.received
    assert seen.answered is None
    assert seen.json is not None
    assert seen.violations == ()
    assert send(http, sandbox).status == 201


def test_reset_on_a_reused_keep_alive_connection(fluents):
    pool = urllib3.HTTPConnectionPool(
        "127.0.0.1", int(fluents.base_url.rsplit(":", 1)[1]), maxsize=1, retries=False
    )
    headers = {**auth(), "Content-Type": "application/json"}
    body = json.dumps(SMS).encode()
    assert pool.request("POST", "/v1/messages", body=body, headers=headers).status == 201
    fluents.enqueue(Fault.reset_before_read())  # taken by the next request, not the idle socket

    with pytest.raises(ProtocolError):
        pool.request("POST", "/v1/messages", body=body, headers=headers)
    assert pool.request("POST", "/v1/messages", body=body, headers=headers).status == 201
    pool.close()


def test_the_relay_id_header_conforms_and_kept_requests_are_counted_by_it(sandbox, http):
    # Not in either document: OpenAPI allows undeclared headers, and so must the stand-ins.
    def by(relay_id: str) -> dict[str, str]:
        return {**auth(), "X-Relay-Id": relay_id}

    sandbox.enqueue(Fault.status(503, {"message": "down"}), Fault.reset_after_read())
    assert send(http, sandbox, headers=by("r-1")).status == 503  # not kept
    with pytest.raises(ProtocolError):
        send(http, sandbox, headers=by("r-1"))  # kept, unanswered: may be delivered
    assert send(http, sandbox, headers=by("r-1")).status == 201
    assert send(http, sandbox, headers=by("r-2")).status == 201
    assert send(http, sandbox).status == 201  # no relay id

    assert sandbox.violations() == []
    assert [r.relay_id for r in sandbox.received] == ["r-1", "r-1", "r-1", "r-2", None]
    assert [r.answered for r in sandbox.kept()] == [None, 201, 201, 201]
    assert sandbox.kept_by_relay_id() == {"r-1": 2, "r-2": 1, None: 1}


def test_garbage_body(sandbox, http):
    sandbox.enqueue(Fault.garbage_body())

    response = send(http, sandbox)

    assert response.status == 201
    assert response.data
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.data)
    assert sandbox.received[0].answered == 201


# --- connections, bookkeeping --------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(sandbox):
    port = int(sandbox.base_url.split(":")[2].split("/")[0])
    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, block=True, retries=False)
    path = urllib3.util.parse_url(
        lancepilot_url(sandbox)
        if sandbox.provider == "lancepilot"
        else f"{sandbox.base_url}/v1/messages"
    ).path
    payload = WHATSAPP if sandbox.provider == "lancepilot" else SMS

    first = pool.request("POST", path, json=payload, headers=auth())
    second = pool.request("POST", path, json=payload, headers=auth())

    assert (first.status, second.status) == (201, 201)
    assert pool.num_connections == 1
    assert pool.num_requests == 2
    assert len(sandbox.accepted()) == 2
    pool.close()


def test_on_request_sees_every_request():
    seen: list[Received] = []
    pool = urllib3.PoolManager(retries=False)
    with ProviderSandbox("fluents", TOKEN, on_request=seen.append) as sandbox:
        send(pool, sandbox)
        send(pool, sandbox, {})

    assert [r.answered for r in seen] == [201, 400]
    assert seen == sandbox.received


def test_reset_forgets_requests_and_faults(fluents, http):
    send(http, fluents, {})
    fluents.enqueue(Fault.status(500))
    fluents.set_default(Fault.status(503))

    fluents.reset()

    assert fluents.received == []
    assert fluents.violations() == []
    assert send(http, fluents).status == 201


def test_a_stand_in_answer_that_drifts_from_the_spec_is_reported(lancepilot, http, monkeypatch):
    import relay_local.sandbox as module

    monkeypatch.setattr(module, "_created", lambda provider: module._Answer(201, {"ok": True}))

    assert send(http, lancepilot).status == 201
    violations = lancepilot.violations()
    assert violations
    assert all(v.startswith("stand-in answer 201 does not match the spec") for v in violations)


def test_received_is_a_copy(fluents, http):
    send(http, fluents)

    fluents.received.clear()

    assert len(fluents.received) == 1


def test_sandbox_can_restart(http):
    sandbox = ProviderSandbox("fluents", TOKEN)
    for _ in range(2):
        with sandbox:
            assert send(http, sandbox).status == 201
        http.clear()
    assert len(sandbox.received) == 2


# --- the vendored documents ----------------------------------------------------------------------


def test_vendored_specs_match_shared():
    if not SHARED_SPECS.is_dir():
        pytest.skip(
            f"{SHARED_SPECS} is absent: no shared specs to compare the vendored copies with"
        )
    for name in SPEC_FILES.values():
        shared = SHARED_SPECS / name
        assert shared.is_file(), f"{shared} is missing"
        assert (SPEC_DIR / name).read_bytes() == shared.read_bytes(), (
            f"{SPEC_DIR / name} differs from {shared}; copy the shared one over"
        )
