"""What gunicorn's master checks and says once, before any worker starts (gunicorn.conf.py).

Why in the master: a worker cannot see ``-w`` or ``--bind`` (only the master's ``server.cfg``
holds them), and a bad setting found by each worker would print a traceback per worker and bury
the one line that matters. Here a refusal is one line, the last thing printed, and gunicorn exits
non-zero; a good start is one line that says what is serving.

Try it::

    WEB_CONCURRENCY=2 gunicorn      # refused: several workers need REDIS_URL
"""

from __future__ import annotations

from urllib.parse import urlsplit

from streamchat.config import Settings


class StartupRefused(ValueError):
    """A configuration that cannot work; its message is the one line the user reads."""


def check_startup(settings: Settings, *, workers: int, binds: list[str]) -> str:
    """Raise StartupRefused for a setup that cannot work; else return the start-up line."""
    if workers > 1 and not settings.redis_url:
        raise StartupRefused(
            f"{workers} workers need REDIS_URL: without it each worker keeps its own runs in memory, "
            "and a run started in one worker is unknown to the others. Set REDIS_URL, or run one worker."
        )
    return describe(settings, workers=workers, binds=binds)


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
