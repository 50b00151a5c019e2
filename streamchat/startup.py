"""What gunicorn's master checks and says once, before any worker starts (gunicorn.conf.py).

Why in the master: a worker cannot see ``-w`` or ``--bind`` (only the master's ``server.cfg``
holds them), and a bad setting found by each worker would print a traceback per worker and bury
the one line that matters. Here a refusal is one line, the last thing printed, and gunicorn exits
non-zero; a good start is one line that says what is serving.

Try it::

    WEB_CONCURRENCY=2 gunicorn      # refused: several workers need REDIS_URL
    ACCESS_TOKEN=short gunicorn     # refused: an access token needs 32 characters or more
    OPENAI_API_KEY=sk-... gunicorn --bind 0.0.0.0:8000    # refused: the key would pay for anyone
    gunicorn --preload              # refused: each worker builds its own app after the fork
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from streamchat.config import Settings

# Shorter tokens can be guessed by a patient scanner; 32 random characters cannot.
MIN_ACCESS_TOKEN_CHARS = 32


class StartupRefused(ValueError):
    """A configuration that cannot work; its message is the one line the user reads."""


def check_startup(settings: Settings, *, workers: int, binds: list[str], preload: bool = False) -> str:
    """Raise StartupRefused for a setup that cannot work; else return the start-up line."""
    if preload:
        raise StartupRefused(
            "--preload (preload_app) builds the app once in the master, before the fork: the workers "
            "would share its run store and connections, and miss the metrics directory. "
            "Run without --preload."
        )
    if workers > 1 and not settings.redis_url:
        raise StartupRefused(
            f"{workers} workers need REDIS_URL: without it each worker keeps its own runs in memory, "
            "and a run started in one worker is unknown to the others. Set REDIS_URL, or run one worker."
        )
    if settings.access_token and len(settings.access_token) < MIN_ACCESS_TOKEN_CHARS:
        # The value is a secret: say its length, never the value.
        raise StartupRefused(
            f"ACCESS_TOKEN has {len(settings.access_token)} characters; it needs at least "
            f"{MIN_ACCESS_TOKEN_CHARS}. Make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    exposed = [bind for bind in binds if not is_loopback_bind(bind)]
    open_to_all = not (settings.access_token or settings.allow_unauthenticated)
    if exposed and settings.provider_name == "openai" and open_to_all:
        raise StartupRefused(
            f"listening on {exposed[0]} (beyond this machine) with the openai provider and no "
            "ACCESS_TOKEN: anyone who finds the address would spend your API key. Set ACCESS_TOKEN, "
            "or ALLOW_UNAUTHENTICATED=true if something in front checks who comes in (nginx basic auth)."
        )
    return describe(settings, workers=workers, binds=binds)


def is_loopback_bind(bind: str) -> bool:
    """Tell whether a gunicorn bind address only takes connections from this machine."""
    if bind.startswith("unix:"):
        return True  # a Unix socket: only local processes (nginx) can connect
    if bind.startswith("fd://"):
        return False  # an inherited socket: where it listens is unknown here
    host = bind if bind.count(":") > 1 and not bind.startswith("[") else bind.rpartition(":")[0] or bind
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any address


def describe(settings: Settings, *, workers: int, binds: list[str]) -> str:
    """Return the one line that says what serves: provider, model, store, workers, bind."""
    provider = settings.provider_name
    if provider == "openai":
        host = urlsplit(settings.openai_base_url).hostname if settings.openai_base_url else "api.openai.com"
        provider = f"openai ({host})"
    store = "memory"
    if settings.redis_url:
        # The URL may hold a password: say only where Redis is.
        parts = urlsplit(settings.redis_url)
        where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path
        store = f"redis ({where})"
    return (
        f"streamchat: provider={provider} model={settings.default_model} store={store} "
        f"workers={workers} bind={','.join(binds)}"
    )
