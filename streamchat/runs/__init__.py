"""Runs: one generation each, with a bounded, numbered event log that HTTP responses read.

``store.py`` says what a run store is; ``memory.py`` keeps runs in this worker (the default, for one
worker) and ``redis_store.py`` keeps them in Redis (for several workers and hosts). ``make_store``
picks one from the settings; nothing else in the app knows which it has.
"""

from __future__ import annotations

from streamchat.config import Settings
from streamchat.runs.memory import MemoryRunStore
from streamchat.runs.store import (
    EventsDropped,
    RunNotFound,
    RunStatus,
    RunStore,
    StoredEvent,
    StoreUnavailable,
    TooManyRuns,
    unlogged_fail,
)

__all__ = [
    "EventsDropped",
    "MemoryRunStore",
    "RunNotFound",
    "RunStatus",
    "RunStore",
    "StoreUnavailable",
    "StoredEvent",
    "TooManyRuns",
    "make_store",
    "unlogged_fail",
]


def make_store(settings: Settings) -> RunStore:
    """Return the Redis store when REDIS_URL is set, else the in-memory store."""
    if settings.redis_url:
        from streamchat.runs.redis_store import RedisRunStore  # imports redis only when asked for

        return RedisRunStore.from_settings(settings)
    return MemoryRunStore(
        event_log_size=settings.event_log_size,
        ttl_seconds=settings.run_ttl_seconds,
        max_active_runs=settings.max_active_runs,
        grace_seconds=settings.disconnect_grace_seconds,
        retained_events_limit=settings.retained_events_limit,
    )
