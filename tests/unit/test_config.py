"""Settings from the environment: defaults, empty values, and every mistake named at once."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, Settings

BASE = {"PROVIDER_TOKENS_SECRET": "tokens", "RELAY_AUTH_SECRET": "auth", "IDEMPOTENCY_TABLE": "t"}


def test_defaults_are_the_documented_provider_urls():
    settings = Settings.from_env(BASE)
    assert settings.lancepilot_api_url == "https://lancepilot.com/api/v3"
    assert settings.fluents_api_url == "https://api.fluents.ai"
    assert settings.default_provider is None


def test_empty_values_mean_unset_as_the_template_passes_them():
    settings = Settings.from_env(
        {**BASE, "DEFAULT_PROVIDER": "", "LANCEPILOT_WORKSPACE_ID": " ", "FLUENTS_FROM_NUMBER": ""}
    )
    assert (
        settings.default_provider,
        settings.lancepilot_workspace_id,
        settings.fluents_from_number,
    ) == (None, None, None)


def test_values_are_read_and_urls_lose_a_trailing_slash():
    settings = Settings.from_env(
        {
            **BASE,
            "DEFAULT_PROVIDER": "fluents",
            "FLUENTS_API_URL": "http://127.0.0.1:3002/",
            "FLUENTS_FROM_NUMBER": "+12025550143",
            "HTTP_READ_TIMEOUT": "2.5",
            "MAX_SEND_ATTEMPTS": "2",
        }
    )
    assert settings.default_provider == "fluents"
    assert settings.fluents_api_url == "http://127.0.0.1:3002"
    assert (settings.read_timeout, settings.max_attempts) == (2.5, 2)


def test_every_mistake_is_named():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "DEFAULT_PROVIDER": "sms",
                "LANCEPILOT_WORKSPACE_ID": "nope",
                "FLUENTS_FROM_NUMBER": "555",
                "LANCEPILOT_API_URL": "ftp://x",
                "HTTP_READ_TIMEOUT": "soon",
                "MAX_SEND_ATTEMPTS": "0",
            }
        )
    message = str(caught.value)
    for name in (
        "PROVIDER_TOKENS_SECRET",
        "RELAY_AUTH_SECRET",
        "DEFAULT_PROVIDER",
        "LANCEPILOT_WORKSPACE_ID",
        "FLUENTS_FROM_NUMBER",
        "LANCEPILOT_API_URL",
        "HTTP_READ_TIMEOUT",
        "MAX_SEND_ATTEMPTS",
    ):
        assert name in message
