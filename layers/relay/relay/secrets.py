"""Secrets: read from AWS Secrets Manager through Powertools parameters, cached per process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters.exceptions import (
    GetParameterError,
    TransformParameterError,
)
from botocore.config import Config

from relay.auth import AuthKeys
from relay.errors import DependencyUnavailable, Misconfigured

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


class SecretStore(Protocol):
    """Where JSON secrets come from."""

    def get_json(self, secret_id: str) -> Any: ...


class SecretsManagerStore:
    """AWS Secrets Manager through Powertools' SecretsProvider, with its cache (``max_age``).

    botocore's defaults (60 s timeouts, several retries) could outlast API Gateway's 29 s on a
    cold cache; these bounds keep a Secrets Manager hiccup a quick 503 instead.
    """

    def __init__(self, session: boto3.session.Session, max_age: int) -> None:
        self._max_age = max_age
        client = session.client("secretsmanager", config=FAST_FAIL)
        self._provider = parameters.SecretsProvider(boto3_client=client)

    def get_json(self, secret_id: str) -> Any:
        try:
            return self._provider.get(secret_id, transform="json", max_age=self._max_age)
        except TransformParameterError:
            raise Misconfigured("a relay secret is not valid JSON") from None
        except GetParameterError:
            # Never echo the SDK's message: it can hold the secret's ARN and account.
            raise DependencyUnavailable(
                "the relay could not read its secrets; retry later"
            ) from None


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
