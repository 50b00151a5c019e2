"""Settings, read once from environment variables when the app is created.

Every setting has a default that works on a fresh machine (the offline demo model, loopback only);
docs/configuration.md's table lists each one. A bad value stops the app at start-up with a message
that names the variable, instead of failing later in the middle of someone's stream.

Try it::

    HEARTBEAT_SECONDS=0.5 python -c "from streamchat.config import Settings; print(Settings.from_env())"
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told, with its default."""

    # Which model provider serves: "demo" (offline) or "openai" (any OpenAI-compatible server).
    # Empty means: openai when OPENAI_API_KEY or OPENAI_BASE_URL is set, else demo.
    model_provider: str = ""
    # The openai SDK's own variables; base URL empty means api.openai.com.
    openai_api_key: str = field(default="", repr=False)  # a secret: never in a repr or a log line
    openai_base_url: str = ""
    # The model asked for when a request names none.
    openai_model: str = "gpt-4o-mini"
    # Comma-separated models a request may choose; empty means only the default model.
    allowed_models: str = ""
    # The system prompt is server configuration, never taken from a request.
    system_prompt: str = "You are a helpful assistant. Answer clearly and concisely."
    # Upstream connect timeout. There is no read timeout: the first-token and stall clocks below are
    # the read timeout, with our own fail codes (docs/design.md).
    openai_connect_timeout_seconds: float = 10.0
    # Retries of the SDK for 408/409/429/5xx before the stream opens (0: the client decides).
    openai_max_retries: int = 0
    # Upstream connections kept open for reuse, per worker (httpx transport: also the concurrency cap).
    openai_max_connections: int = 10_000
    # How the SDK's requests travel: "lean" (HTTP/1.1, cheap per token; providers/lean_transport.py)
    # or "httpx" (httpx's own transport: HTTP proxies from the environment, and the like).
    openai_transport: str = "lean"

    # A comment line sent whenever nothing else was written for this long.
    heartbeat_seconds: float = 15.0
    # How long a run keeps generating with no reader attached before it is stopped.
    disconnect_grace_seconds: float = 10.0
    # Upstream silence allowed before the first token, and between tokens.
    first_token_timeout_seconds: float = 60.0
    stall_timeout_seconds: float = 30.0
    # The `retry:` hint sent to EventSource, in milliseconds.
    sse_retry_milliseconds: int = 3000

    # Request limits: a JSON 4xx names the field that broke one.
    max_request_bytes: int = 1_000_000
    max_messages: int = 200
    max_message_chars: int = 200_000
    max_tokens_limit: int = 4096
    default_max_tokens: int = 1024

    # Runs: finished runs are forgotten after this long; the event log keeps this many events.
    run_ttl_seconds: float = 600.0
    event_log_size: int = 20_000
    # New runs beyond this many live ones (per worker) get a 503 instead of starving the others.
    max_active_runs: int = 10_000

    # Where runs live: empty keeps them in this worker's memory (one worker); a Redis URL such as
    # redis://127.0.0.1:6379/0 shares them between every worker and host that uses the same Redis.
    redis_url: str = field(default="", repr=False)  # may hold a password
    # A worker that has not renewed its lease in Redis for this long is taken as dead, and the readers
    # of its runs get `fail` `worker_lost` (Redis store only).
    worker_lost_seconds: float = 15.0

    # --- Putting it on the internet (streamchat/guards.py; docs/deployment.md) ---------------------------
    # When set (32 characters or more), every API route needs `Authorization: Bearer <token>` or the
    # session cookie that POST /session gives for it. Changing it signs everyone out.
    access_token: str = field(default="", repr=False)  # a secret: never in a repr or a log line
    # The explicit way to listen beyond loopback with the openai provider and no ACCESS_TOKEN (for
    # example behind nginx's basic auth): without it gunicorn refuses to start.
    allow_unauthenticated: bool = False
    # Comma-separated origins (scheme://host[:port]) whose POST and DELETE are accepted besides the
    # app's own, and whose CORS preflights are answered. Empty: the app's own origin only.
    allowed_origins: str = ""
    # Runs a client may start (POST /stream and POST /runs together), as "N/second|minute|hour|day";
    # "0" turns the limit off.
    rate_limit: str = "30/minute"
    # Failed sign-ins (POST /session with a wrong token) a client may make.
    session_rate_limit: str = "10/minute"
    # Live runs a client may have at once; 0 turns the limit off.
    max_runs_per_client: int = 3
    # Completion tokens the service may spend per UTC day, all clients together; 0 is unlimited.
    daily_token_budget: int = 0
    # A run still generating after this long ends with `fail` `deadline_exceeded`; 0 is no deadline.
    max_run_seconds: float = 600.0
    # Comma-separated host names a request's Host may name (its port aside); "*" accepts any.
    # Empty: localhost, 127.0.0.1, [::1] and the host part of BIND.
    allowed_hosts: str = ""
    # gunicorn's listening address, read here only to add its host to the default ALLOWED_HOSTS.
    bind: str = ""
    # How many proxies in front are trusted for the client's address and scheme (X-Forwarded-For and
    # -Proto): 1 behind deploy/nginx.conf, 0 when clients connect straight to gunicorn.
    proxy_hops: int = 0
    # Events kept across this worker's finished runs (memory store); past it the oldest are forgotten.
    retained_events_limit: int = 1_000_000
    # A request body not fully read after this long gets a 408, and its connection is closed.
    body_timeout_seconds: float = 10.0
    # A response whose writes make no progress for this long is closed, and its reader counted gone.
    send_timeout_seconds: float = 60.0

    # The line each run leaves in the log when it ends (streamchat/metrics.py): "text" writes
    # key=value pairs, "json" one JSON object alone on its line, for a log shipper to parse.
    log_format: str = "text"

    # The offline demo model's pace: tokens per second, first-token delay, and +/- jitter fraction.
    demo_tokens_per_second: float = 30.0
    demo_first_token_seconds: float = 0.4
    demo_jitter: float = 0.5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables named like the fields, upper-cased."""
        environ = os.environ if environ is None else environ
        values = {}
        for setting in fields(cls):
            raw = environ.get(setting.name.upper())
            if raw is None or raw == "":
                continue
            values[setting.name] = _parse(setting.name.upper(), raw, type(setting.default))
        return cls(**values).checked()

    def with_overrides(self, **overrides: object) -> Settings:
        """Return a copy with some values replaced (used by tests and create_app's test_config)."""
        return replace(self, **overrides).checked()

    def checked(self) -> Settings:
        """Raise ValueError naming the setting if a value is out of range."""
        for setting in fields(self):
            value = getattr(self, setting.name)
            # float() reads "nan" and "inf" too. A NaN slips through a check like `< 0` below, and
            # one NaN timer (gevent.sleep(nan)) stops the event loop from firing any timer at all.
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{setting.name.upper()} must be a finite number, got {value!r}")
        provider = self.provider_name
        if provider not in ("demo", "openai"):
            raise ValueError(f"MODEL_PROVIDER must be 'demo' or 'openai', got {self.model_provider!r}")
        positive = (
            "heartbeat_seconds",
            "disconnect_grace_seconds",
            "first_token_timeout_seconds",
            "stall_timeout_seconds",
            "openai_connect_timeout_seconds",
            "max_request_bytes",
            "max_messages",
            "max_message_chars",
            "max_tokens_limit",
            "default_max_tokens",
            "run_ttl_seconds",
            "event_log_size",
            "max_active_runs",
            "demo_tokens_per_second",
            "openai_max_connections",
            "worker_lost_seconds",
            "retained_events_limit",
            "body_timeout_seconds",
            "send_timeout_seconds",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.upper()} must be greater than 0, got {getattr(self, name)!r}")
        if provider == "openai" and not (self.openai_api_key or self.openai_base_url):
            # Without either, the SDK would send a placeholder key to api.openai.com and fail every run.
            raise ValueError(
                "MODEL_PROVIDER=openai needs OPENAI_API_KEY, or OPENAI_BASE_URL for a server without keys"
            )
        if self.openai_base_url and not _is_http_url(self.openai_base_url):
            # It may hold credentials (a proxy's user:password@): name the variable, never the value.
            raise ValueError(
                "OPENAI_BASE_URL must be an http:// or https:// URL, like https://api.openai.com/v1"
            )
        for origin in self.origins:
            if not _is_http_url(origin) or urlsplit(origin).path:
                raise ValueError(
                    f"ALLOWED_ORIGINS must list origins like https://chat.example.com, got {origin!r}"
                )
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            # The URL may hold a password: name the variable, never echo the value.
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"LOG_FORMAT must be 'text' or 'json', got {self.log_format!r}")
        if self.openai_transport not in ("lean", "httpx"):
            raise ValueError(f"OPENAI_TRANSPORT must be 'lean' or 'httpx', got {self.openai_transport!r}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("DEFAULT_MAX_TOKENS must not exceed MAX_TOKENS_LIMIT")
        if not 0 <= self.demo_jitter < 1:
            raise ValueError(f"DEMO_JITTER must be in [0, 1), got {self.demo_jitter!r}")
        if self.send_timeout_seconds <= self.heartbeat_seconds:
            # A reader that waits for its next heartbeat is not a stuck write: the clock must be longer.
            raise ValueError("SEND_TIMEOUT_SECONDS must be greater than HEARTBEAT_SECONDS")
        for name in ("rate_limit", "session_rate_limit"):
            _check_rate(name.upper(), getattr(self, name))
        for name in (
            "openai_max_retries",
            "demo_first_token_seconds",
            "sse_retry_milliseconds",
            "max_runs_per_client",
            "daily_token_budget",
            "max_run_seconds",
            "proxy_hops",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.upper()} must not be negative, got {getattr(self, name)!r}")
        return self

    @property
    def host_names(self) -> frozenset[str]:
        """The host names a request's Host may name, lower-cased, or {"*"} for any."""
        names = [name.strip().lower() for name in self.allowed_hosts.split(",") if name.strip()]
        if not names:
            names = ["localhost", "127.0.0.1", "[::1]"]
            bind_host = self.bind.strip().rpartition(":")[0] if ":" in self.bind else self.bind.strip()
            if bind_host and not self.bind.startswith("unix:"):
                names.append(bind_host.lower())
        return frozenset(names)

    @property
    def origins(self) -> frozenset[str]:
        """The extra origins listed in ALLOWED_ORIGINS (the app's own is always accepted)."""
        return frozenset(o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip())

    @property
    def provider_name(self) -> str:
        """The provider that serves: explicit MODEL_PROVIDER, else openai if configured, else demo."""
        if self.model_provider:
            return self.model_provider
        return "openai" if (self.openai_api_key or self.openai_base_url) else "demo"

    @property
    def default_model(self) -> str:
        """The model used when a request names none."""
        return "demo" if self.provider_name == "demo" else self.openai_model

    @property
    def models(self) -> tuple[str, ...]:
        """The allow-list of models a request may ask for; the default model comes first."""
        if self.provider_name == "demo":
            return ("demo",)
        extra = [name.strip() for name in self.allowed_models.split(",") if name.strip()]
        return tuple(dict.fromkeys([self.openai_model, *extra]))


def _is_http_url(value: str) -> bool:
    """Tell whether a value is an http(s) URL with a host (a base URL, or an origin)."""
    parts = urlsplit(value.strip())
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def rate_is_off(rate: str) -> bool:
    """Tell whether a rate setting ("30/minute", or "0") turns its limit off."""
    return rate.strip() == "0"


def _check_rate(name: str, rate: str) -> None:
    """Refuse a rate that is neither "0" nor "N/second|minute|hour|day" (N > 0)."""
    if rate_is_off(rate):
        return
    count, slash, period = rate.strip().partition("/")
    if not (slash and count.isdigit() and int(count) > 0 and period in ("second", "minute", "hour", "day")):
        raise ValueError(f"{name} must be like 30/minute (second, minute, hour or day), or 0, got {rate!r}")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _parse(name: str, raw: str, kind: type) -> object:
    """Convert one environment value to the field's type, naming the variable on failure."""
    if kind is bool:
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            # Not read as false: a typo in a switch must not quietly leave it in the other position.
            raise ValueError(f"{name} must be true or false, got {raw!r}")
        return word in _TRUE
    try:
        return kind(raw.strip()) if kind is not str else raw
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
