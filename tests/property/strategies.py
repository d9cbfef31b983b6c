"""Hypothesis strategies for hostile input: JSON of any shape, near-valid messages, odd headers."""

from __future__ import annotations

import base64
import json
import operator
import time
from typing import Any

from hypothesis import strategies as st

from relay.auth import sign
from relay.intake import MAX_BODY_BYTES
from relay.message import FIELDS
from tests.conftest import API_KEY, SIGNING_SECRET, WORKSPACE

# Numbers libphonenumber judges valid, so a message can get past validation.
VALID_NUMBERS = ("+14155550123", "+4915123456789", "+12025550143", "+33612345678", "+61412345678")

# Any code point, lone surrogates included: JSON's "\ud800" escape decodes to one.
any_text = st.text(st.characters(), max_size=40)
# Strings far over every limit (4096 characters of text, 64 KiB of body), cheap to build.
huge_text = st.builds(
    operator.mul, st.sampled_from(["x", "é", "😀", "\ud800", "\x00", " "]), st.integers(0, 70_000)
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
# What Python's json module can return, including the non-standard floats.
python_json_values = st.recursive(
    json_scalars | st.floats(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)

phone_like = (
    st.sampled_from(VALID_NUMBERS)
    | st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True)
    | st.from_regex(r"\+?[0-9 ()\-]{0,20}\n?", fullmatch=True)
    | any_text
    | json_values
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "provider": st.sampled_from(["lancepilot", "fluents", "LANCEPILOT", "sms", ""]) | json_values,
    "to": phone_like,
    "from": phone_like,
    "text": st.text(min_size=1, max_size=30) | any_text | huge_text | json_values,
    "workspace": (
        st.just(WORKSPACE)
        | st.uuids().map(str)
        | st.uuids().map(lambda u: str(u).upper())
        | st.uuids().map(lambda u: "{" + str(u) + "}")
        | any_text
        | json_values
    ),
    "idempotency_key": st.text(min_size=1, max_size=300) | any_text | huge_text | json_values,
}
assert set(FIELD_VALUES) == FIELDS

# A dict with some of the canonical fields (each right, nearly right or wrong) and maybe others.
message_like = st.builds(
    lambda known, unknown: {**unknown, **known},
    st.fixed_dictionaries({}, optional=FIELD_VALUES),
    st.dictionaries(any_text, json_values, max_size=3) | st.just({}),
)


def _nested(depth: int, closed: bool, kind: str) -> bytes:
    opening, closing = (b"[", b"]") if kind == "list" else (b'{"a":', b"}")
    return (
        opening * depth + (b"1" if kind == "dict" else b"") + (closing * depth if closed else b"")
    )


clean_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
# Messages that pass every check (no deployment defaults needed), so that some requests deliver.
valid_messages = st.builds(
    lambda provider, to, text, key: {
        "provider": provider,
        "to": to,
        "text": text,
        **({"workspace": WORKSPACE} if provider == "lancepilot" else {"from": VALID_NUMBERS[2]}),
        **({"idempotency_key": key} if key is not None else {}),
    },
    st.sampled_from(["lancepilot", "fluents"]),
    st.sampled_from(VALID_NUMBERS),
    clean_text,
    st.none() | clean_text,
)


# Bodies as bytes: anything at all, JSON of any shape, messages, deep nesting, huge ones.
body_bytes = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    message_like.map(lambda m: json.dumps(m).encode()),
    valid_messages.map(lambda m: json.dumps(m, ensure_ascii=False).encode()),
    message_like.map(lambda m: json.dumps(m, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.builds(_nested, st.integers(1, 20_000), st.booleans(), st.sampled_from(["list", "dict"])),
    st.builds(lambda n: b"1" * n, st.integers(1, 10_000)),  # Python's int digit limit is 4300
    st.sampled_from([b"", b"null", b"NaN", b'{"a": Infinity}', b"\xef\xbb\xbf{}", b"{}" * 40_000]),
)

# --- headers ---------------------------------------------------------------------------------

header_names = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=20
)
header_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=60) | huge_text.map(
    lambda s: s.encode("utf-8", "replace").decode("utf-8")
)
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON;CHARSET=UTF8",
            'application/json; charset="latin-1"',
            "application/vnd.relay+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json;;;charset",
            ";",
            "",
            " ",
        ]
    )
    | header_values
)
prefers = st.sampled_from(["respond-async", "RESPOND-ASYNC; wait=5", "wait=1, respond-async", ""])
not_a_key = st.one_of(
    st.sampled_from(
        [
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            f"Bearer x{API_KEY}",
            f"Bearer {API_KEY[:-1]}",
            f"Token {API_KEY}",
            f"{API_KEY}",
            "Bearer \x00",
            "Bearer ☃☃☃",
        ]
    ),
    header_values.filter(lambda v: API_KEY not in v),
)


def signature_headers(body: bytes, *, age: int = 0, msg_id: str = "msg_prop") -> dict[str, str]:
    """A Standard Webhooks signature over ``body`` with the test signing secret."""
    timestamp = int(time.time()) - age
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(SIGNING_SECRET, msg_id, timestamp, body),
    }


bad_signatures = st.fixed_dictionaries(
    {},
    optional={
        "webhook-id": header_values,
        "webhook-timestamp": st.integers(-(10**15), 10**15).map(str) | header_values,
        "webhook-signature": (
            st.binary(min_size=32, max_size=32).map(lambda b: "v1," + base64.b64encode(b).decode())
            | header_values
        ),
    },
)


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[dict[str, str], str, bool, str, bytes]:
    """``(headers, body, base64_encoded, credential, raw)`` as API Gateway hands them over.

    ``credential`` says how the request authenticates: "bearer" or "signature" (valid),
    "bad bearer", "bad signature" or "none" (never valid). ``raw`` is the body's bytes.
    """
    raw = draw(body_bytes)
    headers = draw(st.dictionaries(header_names.map(str.lower), header_values, max_size=4))
    credential = draw(
        st.sampled_from(["bearer", "signature", "bad bearer", "bad signature", "none"])
    )
    for name in ("authorization", "webhook-signature"):
        headers.pop(name, None)
    if credential == "bearer":
        headers["authorization"] = f"Bearer {API_KEY}"
    elif credential == "signature":
        headers.update(signature_headers(raw, msg_id=draw(st.uuids()).hex))
    elif credential == "bad bearer":
        headers["authorization"] = draw(not_a_key)
    elif credential == "bad signature":
        headers.update(draw(bad_signatures))
    if draw(st.booleans()):
        headers["content-type"] = draw(content_types)
    if draw(st.booleans()):
        headers["prefer"] = draw(prefers | header_values)
    if draw(st.booleans()):
        headers["idempotency-key"] = draw(header_values)
    if draw(st.booleans()):
        encoded = base64.b64encode(raw).decode()
        if draw(st.booleans()):  # damaged base64
            junk = draw(st.sampled_from(["", "=", "!", "é", "\n"]))
            encoded = draw(st.text(max_size=5)) + encoded + junk
        return headers, encoded, True, credential, raw
    # API Gateway passes a text body as a str; undecodable bytes here become lone surrogates.
    return headers, raw.decode("utf-8", "surrogateescape"), False, credential, raw


def oversized_request(
    credential: str, *, base64_encoded: bool, damaged: bool = False
) -> tuple[dict[str, str], str, bool, str, bytes]:
    """A request as ``http_requests`` draws it whose body is one byte over the 64 KiB limit.

    The body is a valid message padded with JSON whitespace, so without the size check it would
    be delivered. ``credential`` is "bearer", "bad bearer" or "none"; ``damaged`` appends a
    character base64 does not allow, so the body is sized from its encoded length.
    """
    message = json.dumps(
        {"provider": "lancepilot", "to": VALID_NUMBERS[0], "text": "hi", "workspace": WORKSPACE}
    ).encode()
    raw = message + b" " * (MAX_BODY_BYTES + 1 - len(message))
    headers = {"content-type": "application/json"}
    if credential == "bearer":
        headers["authorization"] = f"Bearer {API_KEY}"
    elif credential == "bad bearer":
        headers["authorization"] = f"Bearer x{API_KEY}"
    elif credential != "none":
        raise ValueError(f"no oversized request with credential {credential!r}")
    if base64_encoded:
        encoded = base64.b64encode(raw).decode() + ("!" if damaged else "")
        return headers, encoded, True, credential, raw
    return headers, raw.decode(), False, credential, raw
