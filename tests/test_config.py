"""Settings: read from the environment, and a bad value refused at start-up, naming its variable."""

import pytest

from streamchat.config import Settings


def test_defaults_work_on_a_fresh_machine():
    settings = Settings.from_env({})
    assert settings.provider_name == "demo"
    assert settings.heartbeat_seconds == 15.0


def test_values_are_read_by_upper_case_name_and_typed():
    settings = Settings.from_env({"HEARTBEAT_SECONDS": " 2.5 ", "MAX_MESSAGES": "7", "DEMO_JITTER": ""})
    assert (settings.heartbeat_seconds, settings.max_messages) == (2.5, 7)
    assert settings.demo_jitter == Settings().demo_jitter  # empty means the default


def test_a_base_url_without_a_provider_chooses_openai():
    assert Settings.from_env({"OPENAI_BASE_URL": "http://127.0.0.1:8001/v1"}).provider_name == "openai"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HEARTBEAT_SECONDS": "soon"}, "HEARTBEAT_SECONDS must be a float, got 'soon'"),
        ({"MAX_MESSAGES": "1.5"}, "MAX_MESSAGES must be a int, got '1.5'"),
        ({"HEARTBEAT_SECONDS": "0"}, "HEARTBEAT_SECONDS must be greater than 0, got 0.0"),
        ({"DEMO_FIRST_TOKEN_SECONDS": "-1"}, "DEMO_FIRST_TOKEN_SECONDS must not be negative"),
        # float() reads these: a NaN would slip through `< 0`, and one NaN timer stops every timer.
        ({"DEMO_FIRST_TOKEN_SECONDS": "nan"}, "DEMO_FIRST_TOKEN_SECONDS must be a finite number, got nan"),
        ({"STALL_TIMEOUT_SECONDS": "inf"}, "STALL_TIMEOUT_SECONDS must be a finite number, got inf"),
        ({"HEARTBEAT_SECONDS": "-inf"}, "HEARTBEAT_SECONDS must be a finite number, got -inf"),
        ({"DEMO_JITTER": "1"}, "DEMO_JITTER must be in [0, 1), got 1.0"),
        ({"MODEL_PROVIDER": "llama"}, "MODEL_PROVIDER must be 'demo' or 'openai', got 'llama'"),
        ({"OPENAI_TRANSPORT": "carrier pigeon"}, "OPENAI_TRANSPORT must be 'lean' or 'httpx'"),
        ({"MODEL_PROVIDER": "openai"}, "MODEL_PROVIDER=openai needs OPENAI_API_KEY, or OPENAI_BASE_URL"),
        (
            {"DEFAULT_MAX_TOKENS": "9", "MAX_TOKENS_LIMIT": "8"},
            "DEFAULT_MAX_TOKENS must not exceed MAX_TOKENS_LIMIT",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(environ, message):
    with pytest.raises(ValueError) as refused:
        Settings.from_env(environ)
    assert message in str(refused.value)


def test_overrides_are_checked_too():
    with pytest.raises(ValueError, match="FIRST_TOKEN_TIMEOUT_SECONDS must be a finite number"):
        Settings().with_overrides(first_token_timeout_seconds=float("nan"))
