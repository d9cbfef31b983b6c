"""Loopback HTTP stand-ins for the Lancepilot (WhatsApp) and Fluents (SMS) APIs.

A :class:`ProviderSandbox` serves one provider on a local port and checks every request
against that provider's vendored OpenAPI document (``specs/*.openapi.yaml``): the path
template and method, the bearer security scheme, the request body's media type and schema,
and the path parameters. Whatever does not conform is answered the way the provider
documents it and is recorded as a *violation* on the :class:`Received` entry.

Answers follow the real providers:

* Lancepilot: 201 ``{"status", "message", "data"}``; 401 ``{"message": "Unauthenticated."}``;
  404 ``{"message": "Resource not found.", "status": 404}``; 422
  ``{"message": "Validation error", "errors": {field: [...]}}`` (also for invalid path
  parameters, a non-JSON body or a wrong Content-Type); 405 for a wrong method.
* Fluents (NestJS): 201 with an empty body; 400 ``{"message", "error": "Bad Request",
  "statusCode": 400}``; 404 ``{"message": "Cannot POST /x", "error": "Not Found",
  "statusCode": 404}`` (also for a wrong method). The spec documents no 401; a missing or
  wrong token gets NestJS's ``{"message": "Unauthorized", "statusCode": 401}``.

Headers the document does not declare are accepted, as OpenAPI allows and the real APIs do:
the relay's ``X-Relay-Id`` among them. The stand-ins record it (:attr:`Received.relay_id`), so
that tests count what each provider kept per relay id (:meth:`ProviderSandbox.kept_by_relay_id`).

One deliberate deviation from the Lancepilot document: it declares the ``{number}`` path
parameter as ``format: uuid``, but the real API takes the contact's phone number there (digits
with country code, no ``+``). The stand-in checks 8-15 digits instead; see ``_PARAM_OVERRIDES``.

:class:`Fault` makes the next request(s) fail in a chosen way (an error status, with or without
``Retry-After``, a hang, a slow answer, a connection reset before or after the request is read,
a malformed or oddly shaped body on any status) so clients' retry and timeout handling can be
tested. Faults come from a queue (:meth:`ProviderSandbox.enqueue`), a default
(:meth:`ProviderSandbox.set_default`), or a chooser (:meth:`ProviderSandbox.set_chooser`) that
picks one per request after looking at it, so that a test can give each message its own plan.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from openapi_schema_validator import (
    OAS30Validator,
    OAS31Validator,
    oas30_format_checker,
    oas31_format_checker,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

Provider = Literal["lancepilot", "fluents"]

SPEC_DIR = Path(__file__).with_name("specs")
SPEC_FILES: dict[Provider, str] = {
    "lancepilot": "lancepilot-text-message.openapi.yaml",
    "fluents": "fluents-create-message.openapi.yaml",
}

# Parameter schemas that replace the spec's, keyed by (provider, parameter name).
# Lancepilot documents {number} as a UUID, but it is the contact's phone number: E.164 digits
# without the "+" (e.g. 14155550123).
_PARAM_OVERRIDES: dict[tuple[Provider, str], dict[str, Any]] = {
    ("lancepilot", "number"): {"type": "string", "pattern": "^[0-9]{8,15}$"},
}

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# The relay's id for the message a request sends (relay.providers.RELAY_ID_HEADER), lower-case
# as Received.headers keeps names. The documents do not declare it; it is recorded, not checked.
RELAY_ID_HEADER = "x-relay-id"


@dataclass(frozen=True)
class Received:
    """One request as the stand-in saw it."""

    method: str
    path: str  # request target as sent, including any query string
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any | None  # parsed body, None when absent or not JSON
    violations: tuple[str, ...]  # empty when the request conformed to the spec
    answered: int | None  # status sent; None when the connection was dropped or hung
    at: float = field(default_factory=time.monotonic)  # when it arrived (time.monotonic())

    @property
    def relay_id(self) -> str | None:
        """The relay id the request was sent under (``X-Relay-Id``), None without one."""
        return self.headers.get(RELAY_ID_HEADER)

    @property
    def kept(self) -> bool:
        """The provider has the message, or may have: answered 2xx, or read and never answered
        (a hang past the client's timeout, a reset after the read). A reset before the read
        is never recorded at all."""
        return self.answered is None or 200 <= self.answered < 300


@dataclass(frozen=True)
class Fault:
    """What to do with a request instead of the normal answer. Build with the classmethods."""

    kind: Literal[
        "status", "hang", "slow", "drip", "reset_before_read", "reset_after_read", "garbage"
    ]
    code: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    retry_after_in: float | None = None  # a Retry-After HTTP-date this far ahead of the answer

    @classmethod
    def status(
        cls,
        code: int,
        body: Any = None,
        retry_after: str | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        retry_after_date_in: float | None = None,
    ) -> Fault:
        """Answer ``code`` with ``body`` (bytes as-is, anything else as JSON, None = empty).

        ``retry_after`` is sent as given (``"1"``, or any text); ``retry_after_date_in`` sends
        ``Retry-After`` as an HTTP-date that many seconds after the moment of answering (HTTP
        dates have whole seconds, so the wait a client computes is up to a second shorter).
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = retry_after
        typed = any(name.lower() == "content-type" for name in extra)
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
            if not typed:
                extra["Content-Type"] = "application/octet-stream"
        else:
            data = json.dumps(body).encode()
            if not typed:
                extra["Content-Type"] = "application/json"
        return cls(
            "status",
            code=code,
            body=data,
            headers=tuple(extra.items()),
            retry_after_in=retry_after_date_in,
        )

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Read and record the request (answered=None), then wait before answering normally.

        The wait ends early when the sandbox stops; the connection is then dropped.
        """
        return cls("hang", seconds=seconds)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Read the request, wait, then answer normally."""
        return cls("slow", seconds=seconds)

    @classmethod
    def drip(cls, seconds: float) -> Fault:
        """Answer normally, but send the body one byte every ``seconds``."""
        return cls("drip", seconds=seconds)

    @classmethod
    def reset_before_read(cls) -> Fault:
        """Reset the connection (RST) instead of reading the request; it is not recorded.

        Queued and default faults reset as soon as the request's first byte arrives. A chooser
        needs to see the request to pick its fault, so with one the request is read first and
        then dropped unrecorded and unanswered: to the client the two look the same.
        """
        return cls("reset_before_read")

    @classmethod
    def reset_after_read(cls) -> Fault:
        """Read and record the request (answered=None), then reset the connection (RST)."""
        return cls("reset_after_read")

    @classmethod
    def garbage_body(
        cls,
        code: int = 201,
        body: bytes = b"<html>oops</html>",
        content_type: str = "text/html; charset=utf-8",
    ) -> Fault:
        """Answer ``code`` (a 201 by default) with a body that is not JSON (HTML by default)."""
        return cls("garbage", code=code, body=body, headers=(("Content-Type", content_type),))

    @classmethod
    def truncated_json(cls, code: int, document: Any) -> Fault:
        """Answer ``code`` with ``document`` as JSON cut off halfway (a complete HTTP answer,
        ``Content-Type: application/json``, whose body does not parse)."""
        data = json.dumps(document).encode()
        cut = data[: max(1, len(data) // 2)]
        return cls("garbage", code=code, body=cut, headers=(("Content-Type", "application/json"),))

    def headers_now(self) -> tuple[tuple[str, str], ...]:
        """The headers to send with this fault's answer, dated now where a date is asked for."""
        if self.retry_after_in is None:
            return self.headers
        date = email.utils.formatdate(time.time() + self.retry_after_in, usegmt=True)
        return (*self.headers, ("Retry-After", date))


# --- the contract, read from the spec document ---------------------------------------------------


@dataclass(frozen=True)
class _Operation:
    method: str
    template: str  # path template relative to the server prefix
    segments: tuple[str, ...]  # template split on "/"; "{name}" marks a parameter
    params: dict[str, Any]  # path parameter name -> schema validator
    media_types: frozenset[str]  # request body media types
    body: Any  # request body schema validator
    body_required: bool
    bearer: bool  # the security requirement is an HTTP bearer token
    responses: dict[int, Any]  # status -> response body validator, None when no body

    def match(self, path: str) -> dict[str, str] | None:
        parts = path.split("/")
        if len(parts) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for part, segment in zip(parts, self.segments, strict=True):
            if segment.startswith("{") and segment.endswith("}") and part:
                values[segment[1:-1]] = unquote(part)
            elif part != segment:
                return None
        return values


@dataclass(frozen=True)
class _Contract:
    prefix: str  # path of the spec's first server URL, e.g. "/api/v3"
    operations: tuple[_Operation, ...]


def _resolve_refs(node: Any, doc: Mapping[str, Any]) -> Any:
    """Inline every local ``$ref`` (the vendored documents have no cycles)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = doc
            for key in ref[2:].split("/"):
                target = target[key.replace("~1", "/").replace("~0", "~")]
            return _resolve_refs(target, doc)
        return {key: _resolve_refs(value, doc) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(item, doc) for item in node]
    return node


def _uses_bearer(doc: Mapping[str, Any], operation: Mapping[str, Any]) -> bool:
    requirements = operation.get("security", doc.get("security", []))
    schemes = doc.get("components", {}).get("securitySchemes", {})
    names = {name for requirement in requirements for name in requirement}
    for name in names:
        scheme = schemes[name]
        if scheme.get("type") != "http" or scheme.get("scheme", "").lower() != "bearer":
            raise NotImplementedError(f"security scheme {name!r} is not an HTTP bearer scheme")
    return bool(names)


@cache
def _contract(provider: Provider) -> _Contract:
    raw = yaml.safe_load((SPEC_DIR / SPEC_FILES[provider]).read_text(encoding="utf-8"))
    doc = _resolve_refs(raw, raw)
    if str(doc["openapi"]).startswith("3.0"):
        validator_cls, formats = OAS30Validator, oas30_format_checker
    else:
        validator_cls, formats = OAS31Validator, oas31_format_checker

    def validator(schema: Mapping[str, Any]) -> Any:
        return validator_cls(schema, format_checker=formats)

    operations = []
    for template, path_item in doc["paths"].items():
        for method in _HTTP_METHODS:
            if method not in path_item:
                continue
            op = path_item[method]
            params: dict[str, Any] = {}
            for param in [*path_item.get("parameters", []), *op.get("parameters", [])]:
                if param["in"] != "path":
                    raise NotImplementedError(f"{param['in']} parameters are not checked")
                name = param["name"]
                params[name] = validator(_PARAM_OVERRIDES.get((provider, name), param["schema"]))
            request_body = op.get("requestBody", {})
            content = request_body.get("content", {})
            json_media = [media for media in content if media.endswith("json")]
            responses = {
                int(code): (
                    validator(response["content"]["application/json"]["schema"])
                    if "application/json" in response.get("content", {})
                    else None
                )
                for code, response in op["responses"].items()
                if str(code).isdigit()
            }
            operations.append(
                _Operation(
                    method=method.upper(),
                    template=template,
                    segments=tuple(template.split("/")),
                    params=params,
                    media_types=frozenset(content),
                    body=validator(content[json_media[0]]["schema"]) if json_media else None,
                    body_required=bool(request_body.get("required", False)),
                    bearer=_uses_bearer(doc, op),
                    responses=responses,
                )
            )
    prefix = urlsplit(doc["servers"][0]["url"]).path.rstrip("/") if doc.get("servers") else ""
    return _Contract(prefix=prefix, operations=tuple(operations))


# --- how each provider answers -------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any = None  # JSON-serialisable; None = empty body
    headers: tuple[tuple[str, str], ...] = ()


def _created(provider: Provider) -> _Answer:
    if provider == "lancepilot":
        data = {"id": str(uuid.uuid4())}
        return _Answer(
            201, {"status": 201, "message": "Resource created successfully.", "data": data}
        )
    return _Answer(201)  # Fluents documents no body for 201


def _unauthorized(provider: Provider) -> _Answer:
    if provider == "lancepilot":
        return _Answer(401, {"message": "Unauthenticated."})
    # Not in the Fluents spec: NestJS's answer for a failed AuthGuard.
    return _Answer(401, {"message": "Unauthorized", "statusCode": 401})


def _not_found(provider: Provider, method: str, path: str) -> _Answer:
    if provider == "lancepilot":
        return _Answer(404, {"message": "Resource not found.", "status": 404})
    message = f"Cannot {method} {path}"
    return _Answer(404, {"message": message, "error": "Not Found", "statusCode": 404})


def _wrong_method(provider: Provider, method: str, path: str, allowed: list[str]) -> _Answer:
    if provider == "fluents":  # NestJS routes by method and path: an unknown pair is a 404
        return _not_found(provider, method, path)
    message = (
        f"The {method} method is not supported for this route. "
        f"Supported methods: {', '.join(allowed)}."
    )
    return _Answer(405, {"message": message}, (("Allow", ", ".join(allowed)),))


def _invalid(provider: Provider, errors: dict[str, list[str]]) -> _Answer:
    if provider == "lancepilot":
        return _Answer(422, {"message": "Validation error", "errors": errors})
    message = " ".join(text for texts in errors.values() for text in texts)
    return _Answer(400, {"message": message, "error": "Bad Request", "statusCode": 400})


# --- checking a request --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    answer: _Answer
    json: Any | None
    violations: tuple[str, ...]


def _schema_errors(validator: Any, instance: Any, field: str) -> dict[str, list[str]]:
    """Map each schema error to a dotted field name and a Laravel-style message."""
    errors: dict[str, list[str]] = {}
    for error in validator.iter_errors(instance):
        path = [str(part) for part in error.absolute_path]
        if error.validator == "required" and isinstance(error.instance, dict):
            # one error per missing name, but the error does not say which: list them all
            for name in error.validator_value:
                if name not in error.instance:
                    name_path = ".".join([*path, name])
                    _add(errors, name_path, f"The {name_path} field is required.")
        else:
            name_path = ".".join(path) or field
            _add(errors, name_path, f"The {name_path} field is invalid: {error.message}")
    return errors


def _add(errors: dict[str, list[str]], field: str, message: str) -> None:
    messages = errors.setdefault(field, [])
    if message not in messages:
        messages.append(message)


def _check(
    sandbox: ProviderSandbox, method: str, target: str, headers: dict[str, str], body: bytes
) -> _Verdict:
    """Check one request against the spec and decide the provider's normal answer."""
    provider, prefix = sandbox.provider, sandbox.prefix
    contract = _contract(provider)
    path = urlsplit(target).path
    where = f"{provider}: {method} {path}"
    parsed: Any | None = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None

    relative = path[len(prefix) :] if path.startswith(prefix) else None
    matches = [
        (op, values)
        for op in contract.operations
        if relative is not None and (values := op.match(relative)) is not None
    ]
    if not matches:
        known = ", ".join(f"{op.method} {prefix}{op.template}" for op in contract.operations)
        violation = f"{where}: no such path in the spec (documented: {known})"
        return _verdict(
            contract.operations[0], _not_found(provider, method, path), parsed, [violation]
        )
    found = [(op, values) for op, values in matches if op.method == method]
    if not found:
        allowed = sorted({op.method for op, _ in matches})
        violation = f"{where}: method not in the spec (documented: {', '.join(allowed)})"
        answer = _wrong_method(provider, method, path, allowed)
        return _verdict(matches[0][0], answer, parsed, [violation])
    op, values = found[0]

    violations: list[str] = []
    authorized = True
    if op.bearer:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if "authorization" not in headers:
            violations.append(
                f"{where}: no Authorization header (the spec requires a bearer token)"
            )
        elif scheme.lower() != "bearer":
            violations.append(f"{where}: Authorization is not a Bearer credential")
        elif credentials.strip() != sandbox.token:
            violations.append(f"{where}: wrong bearer token")
        authorized = not violations

    errors: dict[str, list[str]] = {}
    for name, validator in op.params.items():
        errors.update(_schema_errors(validator, values.get(name), name))

    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if not body:
        if op.body_required:
            _add(errors, "body", "The request body is required.")
    elif media_type not in op.media_types:
        documented = ", ".join(sorted(op.media_types))
        given = media_type or "(none)"
        _add(errors, "body", f"The request body's Content-Type {given!r} is not {documented}.")
    elif parsed is None:
        _add(errors, "body", "The request body is not valid JSON.")
    elif op.body is not None:
        for name, texts in _schema_errors(op.body, parsed, "body").items():
            for text in texts:
                _add(errors, name, text)

    violations += [f"{where}: {text}" for texts in errors.values() for text in texts]
    if not authorized:
        answer = _unauthorized(provider)
    elif errors:
        answer = _invalid(provider, errors)
    else:
        answer = _created(provider)
    return _verdict(op, answer, parsed, violations)


def _verdict(op: _Operation, answer: _Answer, parsed: Any, violations: list[str]) -> _Verdict:
    """Check the stand-in's own answer against the spec's response schema for its status.

    A mismatch means the stand-in has drifted from the spec; it is reported as a violation so
    that tests asserting "no violations" notice.
    """
    if answer.status in op.responses:
        validator = op.responses[answer.status]
        problems = (
            [error.message for error in validator.iter_errors(answer.body)]
            if validator is not None
            else (["the spec documents no body"] if answer.body is not None else [])
        )
        violations = violations + [
            f"stand-in answer {answer.status} does not match the spec: {problem}"
            for problem in problems
        ]
    return _Verdict(answer, parsed, tuple(violations))


# --- the HTTP server -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sandbox: ProviderSandbox) -> None:
        self.sandbox = sandbox
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, resets) and connections the sandbox reset on purpose
        # (their file objects are closed) are part of the game; stay quiet about those.
        if not isinstance(sys.exc_info()[1], ConnectionError | ValueError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK of the headers (about 40 ms), a stall no real provider's server has.
    disable_nagle_algorithm = True
    server: _Server
    _fault: Fault | None = None
    _chooser: Callable[[Received], Fault | None] | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the sandbox records requests instead of logging them."""

    def setup(self) -> None:
        super().setup()
        self.server.sandbox._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._track(self.connection, add=False)

    def handle_one_request(self) -> None:
        # Wait for the next request's first byte before taking a fault, so that idle
        # keep-alive connections do not use faults up.
        try:
            waiting = self.rfile.peek(1) if isinstance(self.rfile, io.BufferedReader) else b"?"
        except OSError:
            waiting = b""
        if not waiting:
            self.close_connection = True
            return
        self._fault, self._chooser = self.server.sandbox._next_fault()
        if self._fault is not None and self._fault.kind == "reset_before_read":
            self._reset()
            return
        super().handle_one_request()

    def _serve(self) -> None:
        sandbox = self.server.sandbox
        fault = self._fault
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            body = self._read_body()
        except EOFError:
            # The client went away mid-request (killed, or gave up): a server never sees such a
            # request as received, so neither does the sandbox.
            self.close_connection = True
            return
        except ValueError:
            self.close_connection = True
            violation = f"{sandbox.provider}: {self.command} {self.path}: malformed body framing"
            sandbox._record(
                Received(self.command, self.path, headers, b"", None, (violation,), 400)
            )
            self._send(_Answer(400, {"message": "Malformed request body framing."}))
            return
        verdict = _check(sandbox, self.command, self.path, headers, body)
        seen = Received(
            self.command, self.path, headers, body, verdict.json, verdict.violations, None
        )
        if self._chooser is not None:
            fault = self._chooser(seen)
            if fault is not None and fault.kind == "reset_before_read":
                self._reset()  # read only to choose: not recorded, not answered
                return

        if fault is not None and fault.kind in ("status", "garbage"):
            sandbox._record(replace(seen, answered=fault.code))
            self._send_raw(fault.code, fault.body, fault.headers_now())
            return
        if fault is not None and fault.kind in ("hang", "reset_after_read"):
            sandbox._record(seen)  # the client is expected to give up before any answer comes
            if fault.kind == "reset_after_read" or sandbox._pause(fault.seconds + sandbox.latency):
                self._reset()
            else:
                self._send(verdict.answer)
            return
        if fault is not None and fault.kind == "drip":
            sandbox._record(replace(seen, answered=verdict.answer.status))
            self._send(verdict.answer, drip=fault.seconds)
            return
        slow = fault.seconds if fault is not None else 0.0
        if sandbox._pause(sandbox.latency + slow):
            self._reset()  # the sandbox is stopping
            return
        sandbox._record(replace(seen, answered=verdict.answer.status))
        self._send(verdict.answer)

    def _serve_counted(self) -> None:
        self.server.sandbox._flight(+1)
        self._counted = True
        try:
            self._serve()
        finally:
            self._landed()

    def _landed(self) -> None:
        """The request is no longer in flight: counted before its answer is written, since the
        client may send its next request (on another connection) as soon as it has read it."""
        if getattr(self, "_counted", False):
            self._counted = False
            self.server.sandbox._flight(-1)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve_counted

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):  # ValueError if bad
                chunks.append(self._read_exactly(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self._read_exactly(length)

    def _read_exactly(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) < size:
            raise EOFError(f"{len(data)} of {size} bytes, then the connection closed")
        return data

    def _send(self, answer: _Answer, drip: float = 0.0) -> None:
        headers = answer.headers
        body = b""
        if answer.body is not None:
            body = json.dumps(answer.body).encode()
            headers = (*headers, ("Content-Type", "application/json"))
        self._send_raw(answer.status, body, headers, drip)

    def _send_raw(
        self, status: int, body: bytes, headers: tuple[tuple[str, str], ...], drip: float = 0.0
    ) -> None:
        self._landed()
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not drip:
                self.wfile.write(body)
            for i in range(len(body) if drip else 0):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                if self.server.sandbox._pause(drip):
                    break
            self.wfile.flush()
        except (OSError, ValueError):
            self.close_connection = True

    def _reset(self) -> None:
        """Close the connection with an RST instead of a FIN."""
        self._landed()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        self.connection.close()


class ProviderSandbox:
    """A local stand-in for one provider's HTTP API; see the module docstring."""

    def __init__(
        self,
        provider: Provider,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str | None = None,
        latency: float = 0.0,
        on_request: Callable[[Received], None] | None = None,
    ) -> None:
        if provider not in SPEC_FILES:
            raise ValueError(f"unknown provider {provider!r}")
        self.provider: Provider = provider
        self.token = token
        self.host = host
        self.port = port
        if prefix is None:
            prefix = _contract(provider).prefix
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.latency = latency
        self.on_request = on_request
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._queue: deque[Fault] = deque()
        self._default: Fault | None = None
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._chooser: Callable[[Received], Fault | None] | None = None
        self.peak_in_flight = 0  # most requests being answered at once since the last reset

    @property
    def base_url(self) -> str:
        """``http://host:port`` plus the server prefix; available once started."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.prefix}"

    def start(self) -> ProviderSandbox:
        if self._server is not None:
            return self
        self._stopping = threading.Event()
        self._server = _Server((self.host, self.port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"{self.provider}-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes hung and slow requests
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # wakes handlers waiting on idle keep-alive connections
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ProviderSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def enqueue(self, *faults: Fault) -> None:
        """Apply ``faults`` to the next requests, one each, in order."""
        with self._lock:
            self._queue.extend(faults)

    def set_default(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every request while no queued fault is left (None = normal)."""
        with self._lock:
            self._default = fault

    @property
    def received(self) -> list[Received]:
        """A copy of every request seen so far, oldest first."""
        with self._lock:
            return list(self._received)

    def accepted(self) -> list[Received]:
        """The requests answered with a 2xx status."""
        return [r for r in self.received if r.answered is not None and 200 <= r.answered < 300]

    def kept(self) -> list[Received]:
        """The requests the provider has or may have (``Received.kept``): 2xx or unanswered."""
        return [r for r in self.received if r.kept]

    def kept_by_relay_id(self) -> Counter[str | None]:
        """How many requests the provider kept per ``X-Relay-Id`` (None: sent without one).

        A relay id counted once was delivered once; more than once, the provider may hold
        duplicates, each of which must follow a request it kept without answering.
        """
        return Counter(r.relay_id for r in self.kept())

    def violations(self) -> list[str]:
        return [violation for r in self.received for violation in r.violations]

    def reset(self) -> None:
        """Forget received requests, queued faults, the default fault and the peak in flight."""
        with self._lock:
            self._received.clear()
            self._queue.clear()
            self._default = None
            self._chooser = None
            self.peak_in_flight = self._in_flight

    # --- used by the handler ---

    def set_chooser(self, chooser: Callable[[Received], Fault | None] | None) -> None:
        """Ask ``chooser`` for each request's fault while nothing is queued (fault injection).

        The chooser sees the request as read (``answered`` None) and returns its fault, or
        None for the normal answer; it runs on the request's thread, so it must be thread-safe.
        The default fault does not apply while a chooser is set.
        """
        with self._lock:
            self._chooser = chooser

    def _next_fault(self) -> tuple[Fault | None, Callable[[Received], Fault | None] | None]:
        """The next request's fault, or the chooser that picks it once the request is read."""
        with self._lock:
            if self._queue:
                return self._queue.popleft(), None
            if self._chooser is not None:
                return None, self._chooser
            return self._default, None

    def _record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)
        if self.on_request is not None:
            self.on_request(received)

    def _flight(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def _pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the sandbox is stopping meanwhile."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)
