"""What a run store is: the interface that the producer, the readers and the routes talk to.

A run's journey: the producer (streamchat/producer.py) creates it and appends ``start``, then
``token`` events, then exactly one terminal event (``done`` or ``fail``) through ``finish``. Any
number of readers (streamchat/reader.py) read the log from an event id. Each reader attaches a
doorbell (a gevent Event) that the store rings when the run has something new, and waits on it
between reads; a reader that reconnects simply reads again from its ``Last-Event-ID``.

Two stores implement it, side by side, and nothing outside this package knows which one it has:

- ``MemoryRunStore`` (memory.py): runs in this worker's memory. The embedded default, for one worker.
- ``RedisRunStore`` (redis_store.py): runs in Redis, shared by every worker of every host.

Events are stored already encoded as SSE frames, so a frame is encoded once however many readers
it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import gevent.event

from streamchat.protocol import (
    DONE,
    FAIL,
    FINISH_STOPPED,
    STATE_DONE,
    STATE_FAILED,
    STATE_STOPPED,
    FailCode,
    fail_data,
)
from streamchat.sse import encode_event


def terminal_outcome(name: str, data: dict) -> tuple[str, str | None, str | None]:
    """Return the (state, finish_reason, code) that a run's terminal event gives it."""
    if name == DONE:
        reason = data["finish_reason"]
        return (STATE_STOPPED if reason == FINISH_STOPPED else STATE_DONE), reason, None
    if name == FAIL:
        return STATE_FAILED, None, data["code"]
    raise ValueError(f"terminal event must be 'done' or 'fail', got {name!r}")


def unlogged_fail(code: FailCode) -> bytes:
    """Return a ``fail`` frame that the run's log does not hold: no ``id:`` line, so that a client's
    Last-Event-ID stays on the last event it really got (a reader's own end when the store is lost).
    """
    return encode_event(FAIL, fail_data(code), None)


class RunNotFound(LookupError):
    """The run id is unknown here, or the run has expired."""


class EventsDropped(LookupError):
    """The events after the requested id are no longer in the bounded log."""


class TooManyRuns(RuntimeError):
    """This worker already produces MAX_ACTIVE_RUNS live runs."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (Redis down or unreachable); the route answers 503."""


class StoredEvent(NamedTuple):
    """One event of a run's log: its id, its name and its SSE frame, ready to write."""

    id: int
    name: str
    frame: bytes


@dataclass(frozen=True)
class RunStatus:
    """A run's outcome so far, as ``GET /runs/<id>`` reports it."""

    id: str
    model: str
    state: str  # one of protocol.RUN_STATES
    last_event_id: int
    finish_reason: str | None = None
    code: str | None = None

    def as_json(self) -> dict:
        """Return the JSON body of the status endpoint (absent fields left out)."""
        body = {"id": self.id, "model": self.model, "state": self.state, "last_event_id": self.last_event_id}
        if self.finish_reason is not None:
            body["finish_reason"] = self.finish_reason
        if self.code is not None:
            body["code"] = self.code
        return body


class RunStore(Protocol):
    """What producers, readers and routes need from wherever runs are kept."""

    kind: str  # "memory" or "redis", as /healthz and the start-up line say

    def create(self, model: str) -> str:
        """Create a running run produced by this process and return its id."""
        ...

    def append(self, run_id: str, name: str, data: dict) -> int:
        """Append a non-terminal event and return its id."""
        ...

    def append_token(self, run_id: str, text: str, tokens: int) -> int:
        """Append a ``token`` event (the hot path: once per token) and return its id."""
        ...

    def finish(self, run_id: str, name: str, data: dict) -> int:
        """Append the terminal event (``done`` or ``fail``) and mark the run finished."""
        ...

    def read(self, run_id: str, after_id: int, limit: int | None = None) -> list[StoredEvent]:
        """Return the events after ``after_id``, the first ``limit`` of them if given (without
        waiting; see attach_reader). Raise EventsDropped if the log no longer holds the first."""
        ...

    def status(self, run_id: str) -> RunStatus | None:
        """Return the run's status, or None if it is unknown or expired."""
        ...

    def accepts_events(self, run_id: str) -> bool:
        """Tell whether the run can still take events: it exists here and has no terminal event."""
        ...

    def request_stop(self, run_id: str) -> RunStatus | None:
        """Ask a live run to stop, wherever it is produced; return its status (None: unknown)."""
        ...

    def on_stop(self, run_id: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` once if a stop is requested while the run is live (it must not block)."""
        ...

    def attach_reader(self, run_id: str, doorbell: gevent.event.Event) -> None:
        """Count a reader in; ``doorbell`` is set whenever the run gets a new event."""
        ...

    def detach_reader(self, run_id: str, doorbell: gevent.event.Event) -> None:
        """Count a reader out; a live run left unread everywhere for the grace period is stopped."""
        ...

    def produced_here(self, run_id: str) -> bool:
        """Tell whether this process produces the run (a reader elsewhere can resume it on shutdown)."""
        ...

    def check_health(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached right now."""
        ...

    def close(self) -> None:
        """Let go of background work and connections (at worker exit)."""
        ...
