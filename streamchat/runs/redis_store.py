"""Runs kept in Redis, shared by every worker of every host that uses the same REDIS_URL.

Set ``REDIS_URL`` and any worker can serve any route of any run: start a run on host A, read it on
host B, resume it on A, stop it through B. The memory store (memory.py) stays the default for one
worker; the interface is the same (store.py). This module is the store's face: it implements that
interface and ties together the parts below, each in a module of its own.

How it fits together, per worker (docs/deployment.md, "Scaling out", has the diagram):

- One Redis Stream per run holds its events. The stream entry id ``0-N`` *is* the SSE event id N,
  so ``Last-Event-ID`` maps straight onto ``XRANGE``/``XREAD``. Bounded by an exact ``MAXLEN``
  (EVENT_LOG_SIZE), so a resume from a trimmed id is a 409, never a silent gap; every key expires
  RUN_TTL_SECONDS after the run's last write (a sliding TTL while it runs), so nothing grows forever.
  The keys and the Lua scripts that write them: redis_keys.py, redis_lua.py.
- **The writer** (redis_writer.py): one greenlet sends every append of every run produced here.
  What piles up while a round trip is in flight goes in the next one, one Lua call for the batch
  (redis_lua.APPEND), so a busy worker sends many tokens per round trip and an idle one sends each
  token at once. Local readers are rung only once Redis has the event: a reader never sends what
  the log does not hold.
- **The waiter** (redis_waiter.py): one greenlet blocks in a single ``XREAD`` on every run that is
  read here but produced elsewhere, plus this worker's control stream (``sc:ctl:WID``), which wakes
  it when a reader joins and carries stop requests from other workers. It rings the local readers.
- **The housekeeper** (redis_housekeeper.py): one greenlet renews this worker's lease
  (``sc:worker:WID``), stops runs produced here that nobody reads anywhere for
  DISCONNECT_GRACE_SECONDS, and ends, as ``worker_lost``, runs read here whose producer's lease has
  run out (redis_lua.SETTLE).
- What this worker knows of its runs, shared by the three (redis_local.py); its connections and
  the scripts' loading (redis_client.py).

So Redis connections per worker are a small constant (the writer's, the waiter's and the
housekeeper's own, plus a pool of at most ``POOL_SIZE``: 8 in all) whatever the number of open
streams.

Failures (docs/deployment.md, "What a reader sees"):

- Redis unreachable: new runs and routes that need Redis get a 503 ``store_unavailable`` at once;
  readers end with a ``fail`` ``store_unavailable`` that carries no id (the log does not hold it,
  so a later resume starts from the last event the client really got); runs produced here end the
  same way and their upstream is closed. Nothing is retried, so nothing is written twice.
- The producing worker dies: its lease runs out after 2/3 of WORKER_LOST_SECONDS, and a worker with
  readers of the run writes ``fail`` ``worker_lost`` into the run within WORKER_LOST_SECONDS.
  The same fence (redis_lua.APPEND checks owner, state and lease) keeps a worker that was paused
  past its lease from writing into a run that was declared lost meanwhile.

Try it::

    redis-server --port 6379 &
    REDIS_URL=redis://127.0.0.1:6379/0 WEB_CONCURRENCY=4 gunicorn
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable

import gevent
import gevent.event
import redis
from redis.exceptions import RedisError

from streamchat.config import Settings
from streamchat.protocol import RUNNING, TERMINAL_EVENTS, TOKEN
from streamchat.runs.redis_client import (
    COMMAND_TIMEOUT_SECONDS,
    POOL_SIZE,
    STORE_ERRORS,
    Scripts,
    make_client,
    unavailable,
)
from streamchat.runs.redis_housekeeper import Housekeeper
from streamchat.runs.redis_keys import control_key, events_key, lease_key, meta_key, status_of, stored
from streamchat.runs.redis_local import LocalRun, LocalRuns
from streamchat.runs.redis_waiter import Waiter, send_control
from streamchat.runs.redis_writer import Writer
from streamchat.runs.store import (
    EventsDropped,
    RunNotFound,
    RunStatus,
    StoredEvent,
    StoreUnavailable,
    TooManyRuns,
    terminal_outcome,
)
from streamchat.sse import encode_event, encode_token


class RedisRunStore:
    """Runs in Redis; readers woken by one waiter per worker, writes batched by one writer."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        event_log_size: int,
        ttl_seconds: float,
        max_active_runs: int,
        grace_seconds: float,
        worker_lost_seconds: float,
    ) -> None:
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.max_active_runs = max_active_runs
        # The lease outlives two missed renewals; a dead worker is noticed within worker_lost_seconds.
        self.lease_ms = max(1, int(worker_lost_seconds * 1000 * 2 / 3))
        # A tick of at most a quarter of the TTL: the housekeeper renews a live run's keys half a
        # TTL after their last renewal, which is then always at least a tick before they expire.
        self.tick_seconds = min(1.0, grace_seconds / 4, worker_lost_seconds / 6, ttl_seconds / 4)
        self.worker_id = secrets.token_hex(8)
        # The pool is made here, in the worker (gunicorn loads the app after the fork): a pool made
        # before a fork would share its sockets between processes.
        self._redis = make_client(url, POOL_SIZE, COMMAND_TIMEOUT_SECONDS, "pool")
        self._scripts = Scripts(self._redis, ttl_ms=self.ttl_ms, event_log_size=event_log_size)
        self._runs = LocalRuns()
        self._writer = Writer(
            url,
            self._runs,
            self._scripts,
            self.worker_id,
            ttl_refresh_seconds=min(1.0, ttl_seconds / 10),
            pause_seconds=self.tick_seconds,
        )
        self._waiter = Waiter(
            url,
            self._runs,
            self.worker_id,
            event_log_size=event_log_size,
            pause_seconds=min(1.0, self.tick_seconds * 2),
        )
        self._housekeeper = Housekeeper(
            url,
            self._runs,
            self._scripts,
            self.worker_id,
            lease_ms=self.lease_ms,
            grace_seconds=grace_seconds,
            tick_seconds=self.tick_seconds,
        )
        self._greenlets = [
            gevent.spawn(self._writer.run_forever),
            gevent.spawn(self._waiter.run_forever),
            gevent.spawn(self._housekeeper.run_forever),
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisRunStore:
        """Build the store from REDIS_URL and the run settings."""
        return cls(
            settings.redis_url,
            event_log_size=settings.event_log_size,
            ttl_seconds=settings.run_ttl_seconds,
            max_active_runs=settings.max_active_runs,
            grace_seconds=settings.disconnect_grace_seconds,
            worker_lost_seconds=settings.worker_lost_seconds,
        )

    # --- producing (the producer greenlet calls these) ---------------------------------------------

    def create(self, model: str) -> str:
        """Create a running run owned by this worker (one round trip, so a 503 comes at once)."""
        runs = self._runs
        if runs.producing_count >= self.max_active_runs:
            raise TooManyRuns(f"{self.max_active_runs} runs are already streaming here")
        run_id = secrets.token_urlsafe(12)
        runs.producing_count += 1  # reserved before the round trip, so concurrent creates count it
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(lease_key(self.worker_id), b"1", px=self.lease_ms)
                keys = [meta_key(run_id), lease_key(self.worker_id)]
                self._scripts.call(pipe, "CREATE", keys, [model, self.worker_id, self.ttl_ms])
                created = self._scripts.execute(pipe)[1]
        except STORE_ERRORS as err:
            runs.producing_count -= 1
            raise unavailable(err) from None
        if created != 1:  # 72 random bits collided: never in practice, and never reused
            runs.producing_count -= 1
            raise RuntimeError(f"run id {run_id!r} exists already")
        runs.add(LocalRun(run_id, model, produced_here=True, owner=self.worker_id))
        return run_id

    def append(self, run_id: str, name: str, data: dict) -> int:
        """Queue a non-terminal event for the writer; return its id."""
        if name in TERMINAL_EVENTS:
            raise ValueError(f"use finish() for the terminal event {name!r}")
        run = self._producing(run_id)
        return self._writer.queue(run, name, encode_event(name, data, run.next_id))

    def append_token(self, run_id: str, text: str, tokens: int) -> int:
        """Queue a ``token`` event (the hot path); return its id."""
        run = self._producing(run_id)
        return self._writer.queue(run, TOKEN, encode_token(text, tokens, run.next_id))

    def finish(self, run_id: str, name: str, data: dict) -> int:
        """Queue the terminal event with the run's outcome; Redis marks the run finished with it."""
        run = self._producing(run_id)
        frame = encode_event(name, data, run.next_id)
        run.final = terminal_outcome(name, data)
        run.stop_callbacks.clear()
        self._runs.producing_count -= 1
        return self._writer.queue(run, name, frame)

    def accepts_events(self, run_id: str) -> bool:
        """Tell whether the run is produced here and can still take events."""
        run = self._runs.get(run_id)
        return run is not None and run.produced_here and run.final is None and not run.lost

    def on_stop(self, run_id: str, callback: Callable[[], None]) -> None:
        """Register what stopping this run means; a stop that came first calls it at once."""
        run = self._producing(run_id)
        if run.stop_requested:
            callback()
        else:
            run.stop_callbacks.append(callback)

    def produced_here(self, run_id: str) -> bool:
        """Tell whether this worker produces the run."""
        run = self._runs.get(run_id)
        return run is not None and run.produced_here

    def _producing(self, run_id: str) -> LocalRun:
        run = self._runs.get(run_id)
        if run is None or not run.produced_here:
            raise RunNotFound(run_id)
        if run.lost:
            raise StoreUnavailable(f"run {run_id} was lost with the run store")
        if run.final is not None:
            raise ValueError(f"run {run_id!r} has already finished")
        return run

    # --- reading (readers and routes call these) ----------------------------------------------------

    def read(self, run_id: str, after_id: int, limit: int | None = None) -> list[StoredEvent]:
        """Return the events after ``after_id`` (at most ``limit``): from this worker's copy if it
        has them, else Redis."""
        run = self._runs.get(run_id)
        if run is not None and after_id >= run.base_id and not run.catch_up:
            events = run.events[after_id - run.base_id :] if after_id < run.last_id else []
            if run.synthetic is not None:
                events = [*events, run.synthetic]
            return events if limit is None else events[:limit]
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.xrange(events_key(run_id), min=f"(0-{after_id}", max="+", count=limit)
                pipe.exists(meta_key(run_id))
                entries, exists = self._scripts.execute(pipe)
        except STORE_ERRORS as err:
            raise unavailable(err) from None
        if not exists:
            raise RunNotFound(run_id)
        events = [stored(entry) for entry in entries]
        # MAXLEN trims the oldest entries only, so the newest is always there: events after
        # after_id exist exactly when XRANGE returns some, and a gap is a trimmed log.
        if events and events[0].id != after_id + 1:
            raise EventsDropped(f"events after {after_id} were dropped from the log")
        return events

    def status(self, run_id: str) -> RunStatus | None:
        """Return the run's status as Redis has it; a run whose producer is gone is ended first."""
        run = self._runs.get(run_id)
        if run is not None and run.produced_here:
            return run.status()
        meta = self._scripts.meta_of(self._redis, run_id)
        if meta is None:
            return None
        if run is not None and meta["state"] != RUNNING and int(meta["last"]) > run.last_id:
            run.catch_up = True  # read here, ended in Redis before the waiter brought the end
        return status_of(run_id, meta)

    def request_stop(self, run_id: str) -> RunStatus | None:
        """Stop a run: here by its callbacks, elsewhere through its owner's control stream."""
        run = self._runs.get(run_id)
        if run is not None and run.produced_here:
            run.stop()
            return run.status()
        meta = self._scripts.meta_of(self._redis, run_id)
        if meta is None:
            return None
        if meta["state"] == RUNNING:
            self._send_control(meta["owner"], b"stop", run_id.encode())
        return status_of(run_id, meta)

    def attach_reader(self, run_id: str, doorbell: gevent.event.Event) -> None:
        """Count a reader in; a run produced elsewhere is added to what the waiter watches."""
        run = self._runs.get(run_id)
        if run is None:
            meta = self._scripts.meta_of(self._redis, run_id)
            if meta is None:
                raise RunNotFound(run_id)
            # Another reader of this worker may have joined during that round trip: share its copy.
            run = self._runs.get(run_id)
            if run is None:
                # Watch from the last event Redis holds now; older events are read from Redis directly.
                run = LocalRun(
                    run_id, meta["model"], produced_here=False, owner=meta["owner"], base_id=int(meta["last"])
                )
                run.state = meta["state"]
                self._runs.add(run)
                if run.state == RUNNING:
                    # Registered first, then the wake: a waiter woken earlier would not see the run.
                    self._send_control(self.worker_id, b"wake", b"")
        if not run.doorbells and not run.produced_here:
            # The producing worker counts its own readers; others tell it through Redis.
            self._writer.tell_presence(run_id, True)
            run.ttl_refreshed_at = time.monotonic()  # the writer's HSET comes with a PEXPIRE
        run.doorbells.append(doorbell)
        run.last_read_at = time.monotonic()

    def detach_reader(self, run_id: str, doorbell: gevent.event.Event) -> None:
        """Count a reader out; this worker forgets a run it neither produces nor reads."""
        run = self._runs.get(run_id)
        if run is None or doorbell not in run.doorbells:
            return
        run.doorbells.remove(doorbell)
        if run.doorbells:
            return
        run.last_read_at = time.monotonic()
        if not run.produced_here:
            self._writer.tell_presence(run_id, False)
        if not run.produced_here or run.lost or (run.final is not None and not run.pending):
            self._runs.forget(run)

    def check_health(self) -> None:
        """Ping Redis; raise StoreUnavailable if it does not answer."""
        try:
            self._redis.ping()
        except STORE_ERRORS as err:
            raise unavailable(type(err).__name__) from None

    @property
    def client(self) -> redis.Redis:
        """The pooled client, for what shares this worker's Redis connections (the request guards)."""
        return self._redis

    def close(self) -> None:
        """Write what is queued (for at most a second), give up the lease, and stop the greenlets."""
        self._writer.flush(timeout=1.0)
        gevent.killall(self._greenlets, block=True, timeout=1.0)
        with contextlib.suppress(RedisError):  # if Redis is gone, the lease runs out by itself
            self._redis.delete(lease_key(self.worker_id), control_key(self.worker_id))
        self._redis.close()
        self._waiter.close()
        self._housekeeper.close()
        self._writer.close()

    def _send_control(self, worker_id: str, kind: bytes, value: bytes) -> None:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                send_control(pipe, worker_id, kind, value)
                self._scripts.execute(pipe)
        except STORE_ERRORS as err:
            raise unavailable(err) from None
