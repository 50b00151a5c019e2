"""Runs kept in this worker's memory: the embedded default, for one gunicorn worker.

Each run's log is a list of encoded SSE frames; each attached reader has a doorbell (a gevent
Event) that every append rings. Nothing leaves the process, so a run is only visible in the worker
that created it: more than one worker needs the Redis store (redis_store.py), and gunicorn.conf.py
refuses to start several workers without it.

Deliberate choices:

- The log is bounded (EVENT_LOG_SIZE events). A reader asking for events already dropped gets
  ``EventsDropped`` (the route answers 409), never a silent gap in the answer.
- Finished runs are forgotten RUN_TTL_SECONDS after they end, checked lazily when runs are created,
  so an idle server does no housekeeping work at all.
- A run with no reader for DISCONNECT_GRACE_SECONDS is stopped: tokens cost money.
- Finished runs together keep at most RETAINED_EVENTS_LIMIT events: past it, the oldest finished runs
  are forgotten first (their stream then answers 204, their status 404), so that clients reading long
  answers cannot grow the worker without bound within RUN_TTL_SECONDS. Live runs are never dropped.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import gevent.event

from streamchat.protocol import (
    RUNNING,
    TERMINAL_EVENTS,
    TOKEN,
)
from streamchat.runs.store import (
    EventsDropped,
    RunNotFound,
    RunStatus,
    StoredEvent,
    TooManyRuns,
    terminal_outcome,
)
from streamchat.sse import encode_event, encode_token


@dataclass(eq=False, slots=True)
class _Run:
    id: str
    model: str
    state: str = RUNNING
    finish_reason: str | None = None
    code: str | None = None
    events: list[StoredEvent] = field(default_factory=list)
    last_id: int = 0
    # One doorbell per attached reader, rung by every append.
    doorbells: list[gevent.event.Event] = field(default_factory=list)
    stop_callbacks: list[Callable[[], None]] = field(default_factory=list)
    unread_timer: object | None = None  # a gevent loop timer while nobody reads the run

    def status(self) -> RunStatus:
        return RunStatus(self.id, self.model, self.state, self.last_id, self.finish_reason, self.code)


class MemoryRunStore:
    """Runs kept in this worker's memory, readers woken by gevent events."""

    kind = "memory"

    def __init__(
        self,
        event_log_size: int,
        ttl_seconds: float,
        max_active_runs: int,
        grace_seconds: float,
        retained_events_limit: int = 1_000_000,
    ) -> None:
        self.event_log_size = event_log_size
        self.retained_events_limit = retained_events_limit
        self._retained_events = 0  # events held by finished runs (those in _finished_at)
        self.ttl_seconds = ttl_seconds
        self.max_active_runs = max_active_runs
        self.grace_seconds = grace_seconds
        self._runs: dict[str, _Run] = {}
        self._finished_at: OrderedDict[str, float] = OrderedDict()

    def create(self, model: str) -> str:
        """Create a running run; it is stopped if no reader attaches within the grace period."""
        self._forget_expired()
        if len(self._runs) - len(self._finished_at) >= self.max_active_runs:
            raise TooManyRuns(f"{self.max_active_runs} runs are already streaming")
        run = _Run(id=secrets.token_urlsafe(12), model=model)
        self._runs[run.id] = run
        self._arm_unread_timer(run)
        return run.id

    def append(self, run_id: str, name: str, data: dict) -> int:
        """Append a non-terminal event and wake the readers."""
        if name in TERMINAL_EVENTS:
            raise ValueError(f"use finish() for the terminal event {name!r}")
        run = self._live(run_id)
        return self._append(run, name, encode_event(name, data, run.last_id + 1))

    def append_token(self, run_id: str, text: str, tokens: int) -> int:
        """Append a ``token`` event with the token encoder (the same bytes, faster)."""
        run = self._live(run_id)
        return self._append(run, TOKEN, encode_token(text, tokens, run.last_id + 1))

    def finish(self, run_id: str, name: str, data: dict) -> int:
        """Append ``done`` or ``fail``, record the outcome, and start the run's time to live."""
        run = self._live(run_id)
        # Encode first: if the data cannot be encoded, the run must not be marked finished.
        frame = encode_event(name, data, run.last_id + 1)
        run.state, run.finish_reason, run.code = terminal_outcome(name, data)
        run.stop_callbacks.clear()
        self._cancel_unread_timer(run)
        self._finished_at[run_id] = time.monotonic()
        event_id = self._append(run, name, frame)
        self._retained_events += len(run.events)
        self._forget_oldest_past_limit()
        return event_id

    def read(self, run_id: str, after_id: int, limit: int | None = None) -> list[StoredEvent]:
        """Return the logged events with ids above ``after_id`` (at most ``limit``), or raise if some
        were dropped."""
        run = self._get(run_id)
        if not run.events:
            return []
        first_id = max(run.events[0].id, run.last_id - self.event_log_size + 1)
        if after_id + 1 < first_id:
            raise EventsDropped(f"events after {after_id} were dropped; the log starts at {first_id}")
        start = after_id + 1 - run.events[0].id
        return run.events[start:] if limit is None else run.events[start : start + limit]

    def status(self, run_id: str) -> RunStatus | None:
        """Return the run's status, or None if it is unknown or expired."""
        run = self._runs.get(run_id)
        return None if run is None or self._expired(run_id) else run.status()

    def request_stop(self, run_id: str) -> RunStatus | None:
        """Run the stop callbacks of a live run once; return its status (None if unknown)."""
        run = self._runs.get(run_id)
        if run is None or self._expired(run_id):
            return None
        callbacks, run.stop_callbacks = run.stop_callbacks, []
        for callback in callbacks:
            callback()
        return run.status()

    def on_stop(self, run_id: str, callback: Callable[[], None]) -> None:
        """Register what stopping this run means (the producer kills its greenlet)."""
        self._live(run_id).stop_callbacks.append(callback)

    def attach_reader(self, run_id: str, doorbell: gevent.event.Event) -> None:
        """Ring ``doorbell`` at every new event, and cancel a pending unread-stop."""
        run = self._get(run_id)
        run.doorbells.append(doorbell)
        self._cancel_unread_timer(run)

    def detach_reader(self, run_id: str, doorbell: gevent.event.Event) -> None:
        """Forget a reader's doorbell; the last reader leaving a live run arms the unread-stop timer."""
        run = self._runs.get(run_id)
        if run is None or doorbell not in run.doorbells:
            return
        run.doorbells.remove(doorbell)
        if not run.doorbells and run.state == RUNNING:
            self._arm_unread_timer(run)

    def accepts_events(self, run_id: str) -> bool:
        """Tell whether the run can still take events: it exists here and has no terminal event."""
        status = self.status(run_id)
        return status is not None and status.state == RUNNING

    def produced_here(self, run_id: str) -> bool:
        """Every run in memory is produced by this process."""
        return True

    def check_health(self) -> None:
        """Memory is always reachable."""

    def close(self) -> None:
        """Nothing to let go of: the runs go with the process."""

    def _arm_unread_timer(self, run: _Run) -> None:
        """Stop the run after the grace period unless a reader attaches first."""
        # A bare loop timer, not gevent.spawn_later: every run arms one at creation, and a greenlet
        # each would cost memory and CPU for a timer that is almost always cancelled at once.
        self._cancel_unread_timer(run)
        run.unread_timer = gevent.get_hub().loop.timer(self.grace_seconds)
        run.unread_timer.start(self._stop_if_unread, run)

    def _cancel_unread_timer(self, run: _Run) -> None:
        if run.unread_timer is not None:
            run.unread_timer.close()
            run.unread_timer = None

    def _stop_if_unread(self, run: _Run) -> None:
        """Runs in gevent's hub when the timer fires: stop callbacks must not block."""
        self._cancel_unread_timer(run)
        if not run.doorbells and run.state == RUNNING:
            self.request_stop(run.id)

    def _append(self, run: _Run, name: str, frame: bytes) -> int:
        run.last_id += 1
        run.events.append(StoredEvent(run.last_id, name, frame))
        # Trim in batches so the cost of dropping old events is amortised over many appends.
        if len(run.events) > 2 * self.event_log_size:
            del run.events[: len(run.events) - self.event_log_size]
        for doorbell in run.doorbells:
            doorbell.set()
        return run.last_id

    def _get(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None or self._expired(run_id):
            raise RunNotFound(run_id)
        return run

    def _live(self, run_id: str) -> _Run:
        run = self._get(run_id)
        if run.state != RUNNING:
            raise ValueError(f"run {run_id!r} has already finished")
        return run

    def _expired(self, run_id: str) -> bool:
        finished = self._finished_at.get(run_id)
        return finished is not None and time.monotonic() - finished > self.ttl_seconds

    def _forget_expired(self) -> None:
        """Drop finished runs past their time to live (oldest first, so this stops early)."""
        now = time.monotonic()
        while self._finished_at:
            run_id, finished = next(iter(self._finished_at.items()))
            if now - finished <= self.ttl_seconds:
                break
            self._forget(run_id)

    def _forget_oldest_past_limit(self) -> None:
        """Drop the oldest finished runs while finished runs hold more than the retained-events limit.

        The run that has just finished is kept, whatever its size: its readers are still reading it.
        """
        while self._retained_events > self.retained_events_limit and len(self._finished_at) > 1:
            self._forget(next(iter(self._finished_at)))

    def _forget(self, run_id: str) -> None:
        """Forget a finished run and the events it held."""
        del self._finished_at[run_id]
        run = self._runs.pop(run_id, None)
        if run is not None:
            self._retained_events -= len(run.events)
