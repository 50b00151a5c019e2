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


# --- putting it on the internet: the new settings and their defaults ------------------------------------


def test_exposure_defaults_protect_an_operator_who_read_nothing():
    settings = Settings.from_env({})
    assert (settings.access_token, settings.allow_unauthenticated) == ("", False)
    assert (settings.rate_limit, settings.max_runs_per_client, settings.daily_token_budget) == (
        "30/minute",
        3,
        0,
    )
    assert (settings.max_run_seconds, settings.proxy_hops) == (600.0, 0)
    assert (settings.body_timeout_seconds, settings.send_timeout_seconds) == (10.0, 60.0)
    assert settings.retained_events_limit == 1_000_000
    assert settings.host_names == frozenset({"localhost", "127.0.0.1", "[::1]"})
    assert settings.origins == frozenset()


def test_exposure_settings_are_read_from_the_environment():
    settings = Settings.from_env(
        {
            "ALLOW_UNAUTHENTICATED": "true",
            "ALLOWED_ORIGINS": "https://a.example, https://B.example/",
            "ALLOWED_HOSTS": "chat.example.com",
            "RATE_LIMIT": "0",
            "MAX_RUNS_PER_CLIENT": "0",
            "DAILY_TOKEN_BUDGET": "100000",
            "PROXY_HOPS": "1",
        }
    )
    assert settings.allow_unauthenticated is True
    assert settings.origins == frozenset({"https://a.example", "https://b.example"})
    assert settings.host_names == frozenset({"chat.example.com"})
    assert (settings.rate_limit, settings.max_runs_per_client, settings.daily_token_budget) == (
        "0",
        0,
        100000,
    )
    assert settings.proxy_hops == 1


@pytest.mark.parametrize(
    ("bind", "names"),
    [
        ("0.0.0.0:8000", {"localhost", "127.0.0.1", "[::1]", "0.0.0.0"}),
        ("192.168.1.20:8000", {"localhost", "127.0.0.1", "[::1]", "192.168.1.20"}),
        ("[::]:8000", {"localhost", "127.0.0.1", "[::1]", "[::]"}),
        ("unix:/run/streamchat.sock", {"localhost", "127.0.0.1", "[::1]"}),
    ],
)
def test_exposure_bind_host_joins_the_default_allowed_hosts(bind, names):
    assert Settings.from_env({"BIND": bind}).host_names == frozenset(names)


def test_access_token_is_never_in_the_settings_repr():
    assert "s3cret" not in repr(Settings.from_env({"ACCESS_TOKEN": "s3cret" * 8}))


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"RATE_LIMIT": "lots"},
            "RATE_LIMIT must be like 30/minute (second, minute, hour or day), or 0, got 'lots'",
        ),
        ({"RATE_LIMIT": "30/fortnight"}, "RATE_LIMIT must be like 30/minute"),
        ({"RATE_LIMIT": "0/minute"}, "RATE_LIMIT must be like 30/minute"),
        ({"SESSION_RATE_LIMIT": "-1/minute"}, "SESSION_RATE_LIMIT must be like 30/minute"),
        ({"MAX_RUNS_PER_CLIENT": "-1"}, "MAX_RUNS_PER_CLIENT must not be negative, got -1"),
        ({"DAILY_TOKEN_BUDGET": "-5"}, "DAILY_TOKEN_BUDGET must not be negative, got -5"),
        ({"MAX_RUN_SECONDS": "-1"}, "MAX_RUN_SECONDS must not be negative, got -1.0"),
        ({"PROXY_HOPS": "-1"}, "PROXY_HOPS must not be negative, got -1"),
        ({"BODY_TIMEOUT_SECONDS": "0"}, "BODY_TIMEOUT_SECONDS must be greater than 0, got 0.0"),
        ({"RETAINED_EVENTS_LIMIT": "0"}, "RETAINED_EVENTS_LIMIT must be greater than 0, got 0"),
        ({"SEND_TIMEOUT_SECONDS": "15"}, "SEND_TIMEOUT_SECONDS must be greater than HEARTBEAT_SECONDS"),
        ({"ALLOW_UNAUTHENTICATED": "maybe"}, "ALLOW_UNAUTHENTICATED must be true or false, got 'maybe'"),
        ({"ALLOWED_ORIGINS": "garbage"}, "ALLOWED_ORIGINS must list origins like https://chat.example.com"),
        ({"ALLOWED_ORIGINS": "https://a.example/chat"}, "got 'https://a.example/chat'"),
        ({"OPENAI_BASE_URL": "not-a-url"}, "OPENAI_BASE_URL must be an http:// or https:// URL"),
        ({"OPENAI_BASE_URL": "localhost:8001/v1"}, "OPENAI_BASE_URL must be an http:// or https:// URL"),
    ],
)
def test_exposure_bad_values_are_refused_naming_their_variable(environ, message):
    with pytest.raises(ValueError) as refused:
        Settings.from_env(environ)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("Yes", True), ("1", True), ("off", False), ("", False)]
)
def test_a_switch_reads_the_usual_words(raw, value):
    assert Settings.from_env({"ALLOW_UNAUTHENTICATED": raw}).allow_unauthenticated is value
