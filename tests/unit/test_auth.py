"""Authentication: bearer keys and Standard Webhooks signatures, with rotation and tolerance."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from relay.auth import TOLERANCE_SECONDS, AuthKeys, authenticate, sign
from relay.errors import Misconfigured, Unauthenticated

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
NOW = 1_795_453_200
BODY = b'{"to": "+14155550123"}'
KEYS = AuthKeys.from_secret({"api_keys": ["k1", "k2"], "signing_secrets": [SECRET]})


def signature_headers(ts=NOW, body=BODY, secret=SECRET, msg_id="msg_1"):
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def test_sign_matches_the_standard_webhooks_reference_computation():
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, b"msg_1.%d." % NOW + BODY, hashlib.sha256).digest()
    ).decode()
    assert sign(SECRET, "msg_1", NOW, BODY) == f"v1,{expected}"


def test_bearer_keys():
    assert authenticate({"authorization": "Bearer k2"}, BODY, KEYS) == "api_key"
    assert authenticate({"authorization": "bearer k1"}, BODY, KEYS) == "api_key"
    with pytest.raises(Unauthenticated):
        authenticate({"authorization": "Bearer k3"}, BODY, KEYS)


def test_signature_within_tolerance_either_way():
    for skew in (-TOLERANCE_SECONDS, 0, TOLERANCE_SECONDS):
        headers = signature_headers(ts=NOW + skew)
        assert authenticate(headers, BODY, KEYS, now=NOW) == "signature"


@pytest.mark.parametrize("skew", [-TOLERANCE_SECONDS - 1, TOLERANCE_SECONDS + 1])
def test_signature_outside_tolerance(skew):
    with pytest.raises(Unauthenticated):
        authenticate(signature_headers(ts=NOW + skew), BODY, KEYS, now=NOW)


def test_rotation_accepts_old_and_new_secret():
    new = "whsec_" + base64.b64encode(b"new-secret-new-secret-new-secret").decode()
    keys = AuthKeys.from_secret({"api_keys": [], "signing_secrets": [SECRET, new]})
    for secret in (SECRET, new):
        assert authenticate(signature_headers(secret=secret), BODY, keys, now=NOW) == "signature"


def test_secret_without_prefix_is_read_as_base64():
    bare = SECRET.removeprefix("whsec_")
    keys = AuthKeys.from_secret({"signing_secrets": [bare]})
    assert authenticate(signature_headers(), BODY, keys, now=NOW) == "signature"


def test_a_bad_bearer_does_not_spoil_a_good_signature():
    headers = {**signature_headers(), "authorization": "Bearer nope"}
    assert authenticate(headers, BODY, KEYS, now=NOW) == "signature"


def test_empty_secret_refuses_everyone():
    keys = AuthKeys.from_secret({"api_keys": [], "signing_secrets": []})
    for headers in ({"authorization": "Bearer "}, signature_headers()):
        with pytest.raises(Unauthenticated):
            authenticate(headers, BODY, keys, now=NOW)


@pytest.mark.parametrize(
    "secret",
    [
        [],
        "keys",
        {"api_keys": "k"},
        {"api_keys": [1]},
        {"signing_secrets": ["whsec_***"]},
        {"signing_secrets": ["whsec_"]},
    ],
)
def test_malformed_auth_secret_is_a_misconfiguration(secret):
    with pytest.raises(Misconfigured):
        AuthKeys.from_secret(secret)
