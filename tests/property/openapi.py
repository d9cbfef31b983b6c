"""docs/openapi.yaml as a judge of the handler's answers, for tests that call it in-process."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml
from openapi_schema_validator import OAS31Validator, oas31_format_checker

from tests.conftest import REPO


def _inline(node: Any, document: dict[str, Any]) -> Any:
    """The node with every local ``$ref`` replaced by its target (the document has no cycles)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = document
            for part in ref[2:].split("/"):
                target = target[part]
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**_inline(target, document), **_inline(rest, document)}
        return {key: _inline(value, document) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, document) for item in node]
    return node


@cache
def _responses() -> dict[int, dict[str, Any]]:
    document = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    operation = _inline(document["paths"]["/v1/messages"]["post"], document)
    return {int(status): answer for status, answer in operation["responses"].items()}


def gateway_statuses() -> frozenset[int]:
    """The statuses the document gives as API Gateway's own answers (``x-answered-by:
    api-gateway``, e.g. its 429 when throttled): documented for callers, never the relay's."""
    return frozenset(s for s, answer in _responses().items() if _from_gateway(answer))


def _from_gateway(answer: dict[str, Any]) -> bool:
    return answer.get("x-answered-by") == "api-gateway"


def answer_problems(status: int, headers: dict[str, str], body: Any) -> list[str]:
    """Where an answer departs from the document: status, required headers, body schema."""
    responses = _responses()
    if status not in responses:
        return [f"status {status} is not documented"]
    documented = responses[status]
    if _from_gateway(documented):  # e.g. 429: throttled before the relay
        return [f"status {status} is API Gateway's own answer, never the relay's"]
    problems = []
    lowered = {name.lower(): value for name, value in headers.items()}
    for name, header in documented.get("headers", {}).items():
        value = lowered.get(name.lower())
        if value is None:
            if header.get("required"):
                problems.append(f"{status}: required header {name} is missing")
            continue
        validator = OAS31Validator(header["schema"], format_checker=oas31_format_checker)
        problems += [f"{status}: header {name}: {e.message}" for e in validator.iter_errors(value)]
    schema = documented["content"]["application/json"]["schema"]
    validator = OAS31Validator(schema, format_checker=oas31_format_checker)
    problems += [f"{status}: body: {error.message}" for error in validator.iter_errors(body)]
    return problems
