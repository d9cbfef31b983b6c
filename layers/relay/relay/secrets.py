"""Secrets: read from AWS Secrets Manager, cached per process."""

from __future__ import annotations

import copy
import json
import platform
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from relay.auth import AuthKeys
from relay.errors import DependencyUnavailable, Misconfigured, RelayError

if TYPE_CHECKING:
    import boto3

    from relay.config import ProviderName, Settings


# Bounded AWS calls (Secrets Manager, SQS, DynamoDB): a hiccup becomes a quick 503 or a
# retry, not a Lambda timeout. botocore's defaults would allow minutes.
_CONNECT, _READ, _ATTEMPTS = 1.0, 2.0, 2
FAST_FAIL = Config(
    connect_timeout=_CONNECT, read_timeout=_READ, retries={"total_max_attempts": _ATTEMPTS}
)
AWS_CALL_LIMIT_SECONDS = (_CONNECT + _READ) * _ATTEMPTS  # the longest one such call can take


# botocore builds its User-Agent anew twice a call, sanitising it character by character: 6 to 9 %
# of a batch's CPU (docs/performance.md). The clients called for every message (DynamoDB, SQS)
# send this one, built once (boto3's session appends Botocore/<version>); Secrets Manager, read
# every few minutes, keeps botocore's own.
HOT_PATH_USER_AGENT = f"webhook-relay Python/{platform.python_version()}"


def pooled(threads: int) -> Config:
    """FAST_FAIL for a client that ``threads`` threads call at once (Settings.batch_threads):
    past the pool's size botocore drops a connection after each call, and the next call pays
    a new TLS handshake.

    Without botocore's client-side parameter validation: it walks every parameter against the
    service model on each call (about 6 % of a batch's profiled CPU, docs/performance.md) to check
    requests the relay builds in one shape each from checked values, which the service
    validates anyway.
    """
    return FAST_FAIL.merge(
        Config(
            max_pool_connections=max(10, threads),
            user_agent=HOT_PATH_USER_AGENT,
            parameter_validation=False,
        )
    )


# After a failed fetch, calls fail at once for this long instead of asking again: a batch's
# threads then cost Secrets Manager one attempt, not one each. Shorter than the 5 s Retry-After
# of DependencyUnavailable, so a caller who waits as told gets a fresh attempt.
FAILURE_HOLD_SECONDS = 2.0
_MISSING = object()  # not cached; a secret may hold JSON null


class SecretStore(Protocol):
    """Where JSON secrets come from."""

    def get_json(self, secret_id: str) -> Any: ...


class SecretsManagerStore:
    """AWS Secrets Manager, each secret cached for ``max_age`` seconds.

    Not Powertools' SecretsProvider: its package loads every parameter provider at cold start
    (30 to 40 ms, docs/performance.md) for what is one call and a cache here. When a cached
    secret runs out, one thread fetches it and a batch's other threads wait for that answer
    rather than each asking Secrets Manager; if the fetch fails, every call in the next
    ``FAILURE_HOLD_SECONDS`` fails with it instead of trying (and timing out) in turn.
    """

    def __init__(self, session: boto3.session.Session, max_age: int) -> None:
        self._max_age = max_age
        self._client = session.client("secretsmanager", config=FAST_FAIL)
        self._cache: dict[str, tuple[float, Any]] = {}
        self._failed: dict[str, tuple[float, RelayError]] = {}
        self._lock = threading.Lock()

    def get_json(self, secret_id: str) -> Any:
        value = self._fresh(secret_id)
        if value is not _MISSING:
            return value
        with self._lock:
            value = self._fresh(secret_id)  # another thread may have fetched it meanwhile
            if value is not _MISSING:
                return value
            held = self._failed.get(secret_id)
            if held is not None and time.monotonic() - held[0] < FAILURE_HOLD_SECONDS:
                raise _renewed(held[1]) from None
            try:
                value = self._fetch(secret_id)
            except RelayError as fetch_error:
                # A copy: it holds no traceback (the caller's frames) and no relay id.
                self._failed[secret_id] = (time.monotonic(), _renewed(fetch_error))
                raise
            self._failed.pop(secret_id, None)
            self._cache[secret_id] = (time.monotonic(), value)
            return value

    def _fresh(self, secret_id: str) -> Any:
        cached = self._cache.get(secret_id)
        if cached is not None and time.monotonic() - cached[0] < self._max_age:
            return cached[1]
        return _MISSING

    def _fetch(self, secret_id: str) -> Any:
        try:
            answer = self._client.get_secret_value(SecretId=secret_id)
        except (BotoCoreError, ClientError):
            # Never echo the SDK's message: it can hold the secret's ARN and account.
            raise DependencyUnavailable(
                "the relay could not read its secrets; retry later"
            ) from None
        raw = answer.get("SecretString")
        if raw is None:  # a binary secret: retrying will not help, an operator must fix it
            raise Misconfigured("a relay secret holds no text")
        try:
            return json.loads(raw)
        except ValueError:
            raise Misconfigured("a relay secret is not valid JSON") from None


def _renewed(error: RelayError) -> RelayError:
    """A copy for each caller, which stamps its own message's relay id on it."""
    again = copy.copy(error)
    again.relay_id = None
    return again


class Credentials:
    """The relay's two secrets, decoded: who may call it, and how it calls the providers."""

    def __init__(self, store: SecretStore, settings: Settings) -> None:
        self._store = store
        self._auth_secret = settings.auth_secret
        self._tokens_secret = settings.provider_tokens_secret

    def auth_keys(self) -> AuthKeys:
        return AuthKeys.from_secret(self._store.get_json(self._auth_secret))

    def provider_token(self, provider: ProviderName) -> str:
        tokens = self._store.get_json(self._tokens_secret)
        token = tokens.get(provider) if isinstance(tokens, dict) else None
        if not isinstance(token, str) or not token:
            raise Misconfigured(f"the provider tokens secret has no token for {provider}")
        return token
