"""Model providers: the demo model (offline, the default) and any OpenAI-compatible server.

``make_provider`` is the one place that picks a provider from the settings; the rest of the app
only sees the small ``Provider`` interface in base.py.
"""

from __future__ import annotations

from streamchat.config import Settings
from streamchat.providers.base import Provider
from streamchat.providers.demo import DemoProvider


def make_provider(settings: Settings) -> Provider:
    """Return the provider the settings ask for (the openai SDK is imported only if chosen)."""
    if settings.provider_name == "demo":
        return DemoProvider(
            settings.demo_tokens_per_second, settings.demo_first_token_seconds, settings.demo_jitter
        )
    from streamchat.providers.openai_compatible import OpenAICompatibleProvider

    return OpenAICompatibleProvider(settings)
