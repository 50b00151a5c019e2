"""What one worker knows of the runs it produces or reads, when the runs live in Redis.

Redis is the truth; this is the worker's copy. A run produced here keeps its next id, its events
not yet written and its stop callbacks; a run read here keeps the recent events as Redis holds
them, so that its local readers (any number) cost no round trip each, and their doorbells. The
writer, the waiter and the housekeeper (redis_writer.py, redis_waiter.py, redis_housekeeper.py)
all work on the one ``LocalRuns`` of their store.

Deliberate choices:

- **A run's state here is Redis's state**: a terminal event counts once Redis holds it, so a
  reader never sends what the log does not hold.
- **A run lost here gets a ``fail`` without an id** (``synthetic``), sent after the events Redis
  has: the log does not hold it, so a later resume starts from the last event the client really
  got (store.unlogged_fail).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent.event

from streamchat.protocol import FAIL, RUNNING, STATE_FAILED, FailCode
from streamchat.runs.store import RunStatus, StoredEvent, unlogged_fail


@dataclass(eq=False)
class LocalRun:
    """What this worker knows of a run it produces, or reads for a producer elsewhere."""

    id: str
    model: str
    produced_here: bool
    owner: str
    state: str = RUNNING  # as Redis has it: a terminal event counts once Redis holds it
    finish_reason: str | None = None
    code: str | None = None
    # Recent events as Redis holds them, from id base_id + 1 on (older ones are read from Redis).
    events: list[StoredEvent] = field(default_factory=list)
    base_id: int = 0
    doorbells: list[gevent.event.Event] = field(default_factory=list)
    # Produced here: the next id to hand out, the events not yet written, stop callbacks.
    next_id: int = 1
    pending: list[tuple[int, str, bytes]] = field(default_factory=list)
    token_queued: bool = False  # its first token was queued: later ones may wait for a busy writer
    # (state, finish_reason, code) once finish() was called (store.terminal_outcome)
    final: tuple[str, str | None, str | None] | None = None
    lost: bool = False
    # A terminal event said by this worker but not held by Redis (the store was lost): sent last, no id.
    synthetic: StoredEvent | None = None
    # Read here, produced elsewhere, and ended in Redis before the waiter brought the end: read Redis.
    catch_up: bool = False
    stop_callbacks: list[Callable[[], None]] = field(default_factory=list)
    stop_requested: bool = False
    last_read_at: float = field(default_factory=time.monotonic)
    # The last PEXPIRE of the keys this worker keeps alive for the run (redis_housekeeper.py): its
    # meta and events if produced here (by the writer, or the housekeeper when it is quiet), else
    # its readers hash (when its first reader here came, then by the housekeeper).
    ttl_refreshed_at: float = 0.0

    @property
    def last_id(self) -> int:
        """Return the id of the last event Redis holds, as far as this worker knows."""
        return self.events[-1].id if self.events else self.base_id

    def status(self) -> RunStatus:
        """Return the run's status as this worker knows it."""
        return RunStatus(self.id, self.model, self.state, self.last_id, self.finish_reason, self.code)

    def ring(self) -> None:
        """Wake every local reader: the run has something new."""
        for doorbell in self.doorbells:
            doorbell.set()

    def stop(self) -> None:
        """Call the stop callbacks once (the producer closes its upstream); later ones run at once."""
        self.stop_requested = True
        callbacks, self.stop_callbacks = self.stop_callbacks, []
        for callback in callbacks:
            callback()

    def trim(self, event_log_size: int) -> None:
        """Drop the oldest events kept here, beyond twice the log's size (Redis keeps them)."""
        # In batches, like the memory store, so dropping old events is amortised over many appends.
        if len(self.events) > 2 * event_log_size:
            drop = len(self.events) - event_log_size
            self.base_id = self.events[drop - 1].id
            del self.events[:drop]


class LocalRuns:
    """The runs this worker produces or reads, by id, and what it owes Redis about them."""

    def __init__(self) -> None:
        self.by_id: dict[str, LocalRun] = {}
        self.producing_count = 0  # runs produced here with no terminal event yet
        self.abandoned: set[str] = set()  # runs lost here that Redis may still call running

    def get(self, run_id: str) -> LocalRun | None:
        """Return the run if this worker knows it."""
        return self.by_id.get(run_id)

    def add(self, run: LocalRun) -> None:
        """Remember a run produced or read here."""
        self.by_id[run.id] = run

    def all(self) -> list[LocalRun]:
        """Return every run known here (a copy: the caller may forget some)."""
        return list(self.by_id.values())

    def forget(self, run: LocalRun) -> None:
        """Forget a run this worker neither produces nor reads any more."""
        if self.by_id.get(run.id) is run:
            del self.by_id[run.id]

    def lose(self, run: LocalRun, code: FailCode) -> None:
        """End a run produced here that Redis no longer takes: its local readers get a fail without id."""
        if run.lost:
            return
        if run.final is None:
            self.producing_count -= 1
        run.lost = True
        run.pending.clear()
        if code == FailCode.STORE_UNAVAILABLE:
            # Redis may still say "running", with this worker's lease alive: end it there too.
            self.abandoned.add(run.id)
        run.synthetic = StoredEvent(run.last_id, FAIL, unlogged_fail(code))
        run.state, run.code = STATE_FAILED, str(code)
        run.ring()
        run.stop()  # the producer closes its upstream; the housekeeper forgets the run

    def lose_read(self) -> None:
        """Redis is gone: every reader here of a run produced elsewhere gets a fail without id."""
        frame = unlogged_fail(FailCode.STORE_UNAVAILABLE)
        for run in self.all():
            if not run.produced_here and run.state == RUNNING:
                run.synthetic = StoredEvent(run.last_id, FAIL, frame)
                run.state, run.code = STATE_FAILED, str(FailCode.STORE_UNAVAILABLE)
                run.ring()
