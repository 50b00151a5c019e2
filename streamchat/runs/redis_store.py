"""Runs kept in Redis, shared by every worker of every host that uses the same REDIS_URL.

Set ``REDIS_URL`` and any worker can serve any route of any run: start a run on host A, read it on
host B, resume it on A, stop it through B. The memory store (memory.py) stays the default for one
worker; the interface is the same (store.py).

How it fits together, per worker (docs/deployment.md, "Scaling out", has the diagram):

- One Redis Stream per run holds its events. The stream entry id ``0-N`` *is* the SSE event id N,
  so ``Last-Event-ID`` maps straight onto ``XRANGE``/``XREAD``. Bounded by an exact ``MAXLEN``
  (EVENT_LOG_SIZE), so a resume from a trimmed id is a 409, never a silent gap; every key expires
  RUN_TTL_SECONDS after the run's last write (a sliding TTL while it runs), so nothing grows forever.
- **The writer**: one greenlet sends every append of every run produced here. What piles up while a
  round trip is in flight goes in the next pipeline, one Lua call per run (redis_lua.APPEND), so a
  busy worker sends many tokens per round trip and an idle one sends each token at once. Local
  readers are rung only once Redis has the event: a reader never sends what the log does not hold.
- **The waiter**: one greenlet blocks in a single ``XREAD`` on every run that is read here but
  produced elsewhere, plus this worker's control stream (``sc:ctl:WID``), which wakes it when a
  reader joins and carries stop requests from other workers. It rings the local readers.
- **The housekeeper**: one greenlet renews this worker's lease (``sc:worker:WID``), stops runs
  produced here that nobody reads anywhere for DISCONNECT_GRACE_SECONDS, and ends, as
  ``worker_lost``, runs read here whose producer's lease has run out (redis_lua.SETTLE).

So Redis connections per worker are a small constant (the writer's, the waiter's and the
housekeeper's own, plus a pool of at most ``POOL_SIZE``: 8 in all) whatever the number of open
streams. The writer talks to its connection directly (redis-py's ``send_packed_command`` and
``read_response``): it is the hot path, and a pipeline, a pool checkout and a retry wrapper per
round trip were most of its cost in the benchmark's profile.

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
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import gevent.event
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from streamchat.config import Settings
from streamchat.protocol import (
    FAIL,
    RUNNING,
    STATE_DONE,
    STATE_FAILED,
    TERMINAL_EVENTS,
    TOKEN,
    FailCode,
)
from streamchat.runs import redis_lua
from streamchat.runs.store import (
    EventsDropped,
    RunNotFound,
    RunStatus,
    StoredEvent,
    StoreUnavailable,
    TooManyRuns,
    terminal_outcome,
    unlogged_fail,
)
from streamchat.sse import encode_event, encode_token

log = logging.getLogger(__name__)

# Connections in the pool shared by routes, the writer and the housekeeper; the waiter has its own.
POOL_SIZE = 5  # + the writer's, the waiter's and the housekeeper's own: 8 per worker
# How long the waiter's XREAD blocks before it loops (its socket timeout is longer, see __init__).
WAIT_BLOCK_MS = 2000
# How long Redis may take to accept a connection, and to answer a command.
CONNECT_TIMEOUT_SECONDS = 2.0
COMMAND_TIMEOUT_SECONDS = 5.0
# How long a request may wait for a free pooled connection (a burst of new streams queues here).
POOL_WAIT_SECONDS = 5.0
# A writer connection idle for longer than this is checked with a PING before it carries a write.
WRITER_IDLE_CHECK_SECONDS = 1.0
# Control streams are short: a message is read within a round trip of being sent.
CONTROL_STREAM_LENGTH = 1000
CONTROL_STREAM_TTL_MS = 3_600_000
_STORE_ERRORS = (RedisConnectionError, RedisTimeoutError)


def _client(url: str, connections: int, socket_timeout: float, name: str) -> redis.Redis:
    """Return a client whose pool holds at most ``connections`` (pipelines included).

    Made in the worker, never before the fork (gunicorn loads the app in each worker): a pool made
    before a fork would share its sockets between processes.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        # Never retried by redis-py: a write that Redis applied but whose answer was lost must not be
        # sent again. The store turns a failed call into `store_unavailable` instead.
        retry=Retry(NoBackoff(), 0),
        max_connections=connections,
        client_name=f"streamchat-{name}",  # what CLIENT LIST shows an operator
        timeout=POOL_WAIT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=socket_timeout,
    )
    return redis.Redis(connection_pool=pool)


def _meta(run_id: str) -> str:
    return f"sc:{{{run_id}}}:meta"


def _events(run_id: str) -> str:
    return f"sc:{{{run_id}}}:events"


def _readers(run_id: str) -> str:
    return f"sc:{{{run_id}}}:readers"


def _lease(worker_id: str) -> str:
    return f"sc:worker:{worker_id}"


def _control(worker_id: str) -> str:
    return f"sc:ctl:{worker_id}"


def _entry_id(raw: bytes) -> int:
    """Return the SSE event id of a stream entry id ``0-N``."""
    return int(raw.split(b"-", 1)[1])


def _as_meta(flat: list[bytes]) -> dict[str, str] | None:
    """Turn HGETALL's flat reply (as a script returns it) into a dict; None for an unknown run."""
    if not flat:
        return None
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def _status(run_id: str, meta: dict[str, str]) -> RunStatus:
    last = int(meta["last"])
    return RunStatus(
        run_id,
        meta["model"],
        meta["state"],
        last,
        meta.get("finish_reason") or None,
        meta.get("code") or None,
    )


def _stored(entry: tuple[bytes, dict[bytes, bytes]]) -> StoredEvent:
    raw_id, fields = entry
    return StoredEvent(_entry_id(raw_id), fields[b"n"].decode(), fields[b"f"])


@dataclass(eq=False)
class _LocalRun:
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
    ttl_refreshed_at: float = 0.0  # the writer's last PEXPIRE of the run's keys

    @property
    def last_id(self) -> int:
        return self.events[-1].id if self.events else self.base_id

    def status(self) -> RunStatus:
        return RunStatus(self.id, self.model, self.state, self.last_id, self.finish_reason, self.code)


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
        self.event_log_size = event_log_size
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.max_active_runs = max_active_runs
        self.grace_seconds = grace_seconds
        self.worker_lost_seconds = worker_lost_seconds
        # The lease outlives two missed renewals; a dead worker is noticed within worker_lost_seconds.
        self.lease_ms = max(1, int(worker_lost_seconds * 1000 * 2 / 3))
        self.tick_seconds = min(1.0, grace_seconds / 4, worker_lost_seconds / 6)
        self.ttl_refresh_seconds = min(1.0, ttl_seconds / 10)
        self.worker_id = secrets.token_hex(8)
        # The pool is made here, in the worker (gunicorn loads the app after the fork): a pool made
        # before a fork would share its sockets between processes.
        self._redis = _client(url, POOL_SIZE, COMMAND_TIMEOUT_SECONDS, "pool")
        # The waiter's own connection: its socket timeout must be longer than its XREAD's BLOCK, or
        # every quiet wait would end as a timeout error.
        self._waiter_redis = _client(url, 1, WAIT_BLOCK_MS / 1000 + COMMAND_TIMEOUT_SECONDS, "waiter")
        # The housekeeper's own connection: the lease must be renewed on time even when every pooled
        # connection is busy with readers (a missed renewal would make this worker look dead).
        self._lease_redis = _client(url, 1, COMMAND_TIMEOUT_SECONDS, "housekeeper")
        # The writer's own connection, taken from its one-connection pool once and kept.
        self._writer_pool = _client(url, 1, COMMAND_TIMEOUT_SECONDS, "writer").connection_pool
        self._writer_connection: redis.connection.AbstractConnection | None = None
        self._writer_used_at = 0.0
        self._scripts = {name: getattr(redis_lua, name) for name in ("CREATE", "APPEND", "SETTLE", "ABANDON")}
        self._shas: dict[str, str] = {}
        self._runs: dict[str, _LocalRun] = {}
        self._producing_count = 0  # runs produced here with no terminal event yet
        self._abandoned: set[str] = set()  # runs lost here that Redis may still call running
        self._dirty: dict[str, _LocalRun] = {}  # runs with events for the writer, in order
        self._presence: dict[str, bool] = {}  # run id -> has local readers, for the writer to tell Redis
        self._writer_wake = gevent.event.Event()
        self._flushed = gevent.event.Event()
        self._greenlets = [
            gevent.spawn(self._write_forever),
            gevent.spawn(self._wait_forever),
            gevent.spawn(self._housekeep_forever),
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
        if self._producing_count >= self.max_active_runs:
            raise TooManyRuns(f"{self.max_active_runs} runs are already streaming here")
        run_id = secrets.token_urlsafe(12)
        self._producing_count += 1  # reserved before the round trip, so concurrent creates count it
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(_lease(self.worker_id), b"1", px=self.lease_ms)
                keys = [_meta(run_id), _lease(self.worker_id)]
                self._call(pipe, "CREATE", keys, [model, self.worker_id, self.ttl_ms])
                created = self._execute(pipe)[1]
        except _STORE_ERRORS as err:
            self._producing_count -= 1
            raise StoreUnavailable(f"Redis cannot be reached: {err}") from None
        if created != 1:  # 72 random bits collided: never in practice, and never reused
            self._producing_count -= 1
            raise RuntimeError(f"run id {run_id!r} exists already")
        self._runs[run_id] = _LocalRun(run_id, model, produced_here=True, owner=self.worker_id)
        return run_id

    def append(self, run_id: str, name: str, data: dict) -> int:
        """Queue a non-terminal event for the writer; return its id."""
        if name in TERMINAL_EVENTS:
            raise ValueError(f"use finish() for the terminal event {name!r}")
        run = self._producing(run_id)
        return self._queue(run, name, encode_event(name, data, run.next_id))

    def append_token(self, run_id: str, text: str, tokens: int) -> int:
        """Queue a ``token`` event (the hot path); return its id."""
        run = self._producing(run_id)
        return self._queue(run, TOKEN, encode_token(text, tokens, run.next_id))

    def finish(self, run_id: str, name: str, data: dict) -> int:
        """Queue the terminal event with the run's outcome; Redis marks the run finished with it."""
        run = self._producing(run_id)
        frame = encode_event(name, data, run.next_id)
        run.final = terminal_outcome(name, data)
        run.stop_callbacks.clear()
        self._producing_count -= 1
        return self._queue(run, name, frame)

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

    def _producing(self, run_id: str) -> _LocalRun:
        run = self._runs.get(run_id)
        if run is None or not run.produced_here:
            raise RunNotFound(run_id)
        if run.lost:
            raise StoreUnavailable(f"run {run_id} was lost with the run store")
        if run.final is not None:
            raise ValueError(f"run {run_id!r} has already finished")
        return run

    def _queue(self, run: _LocalRun, name: str, frame: bytes) -> int:
        event_id = run.next_id
        run.next_id += 1
        run.pending.append((event_id, name, frame))
        self._dirty[run.id] = run
        self._writer_wake.set()
        return event_id

    # --- reading (readers and routes call these) ----------------------------------------------------

    def read(self, run_id: str, after_id: int) -> list[StoredEvent]:
        """Return the events after ``after_id``: from this worker's copy if it has them, else Redis."""
        run = self._runs.get(run_id)
        if run is not None and after_id >= run.base_id and not run.catch_up:
            events = run.events[after_id - run.base_id :] if after_id < run.last_id else []
            return events if run.synthetic is None else [*events, run.synthetic]
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.xrange(_events(run_id), min=f"(0-{after_id}", max="+")
                pipe.hget(_meta(run_id), "last")
                entries, last = self._execute(pipe)
        except _STORE_ERRORS as err:
            raise StoreUnavailable(f"Redis cannot be reached: {err}") from None
        if last is None:
            raise RunNotFound(run_id)
        events = [_stored(entry) for entry in entries]
        if int(last) > after_id and (not events or events[0].id != after_id + 1):
            raise EventsDropped(f"events after {after_id} were dropped from the log")
        return events

    def status(self, run_id: str) -> RunStatus | None:
        """Return the run's status as Redis has it; a run whose producer is gone is ended first."""
        run = self._runs.get(run_id)
        if run is not None and run.produced_here:
            return run.status()
        meta = self._meta_of(run_id)
        if meta is None:
            return None
        if run is not None and meta["state"] != RUNNING and int(meta["last"]) > run.last_id:
            run.catch_up = True  # read here, ended in Redis before the waiter brought the end
        return _status(run_id, meta)

    def request_stop(self, run_id: str) -> RunStatus | None:
        """Stop a run: here by its callbacks, elsewhere through its owner's control stream."""
        run = self._runs.get(run_id)
        if run is not None and run.produced_here:
            self._stop_local(run)
            return run.status()
        meta = self._meta_of(run_id)
        if meta is None:
            return None
        if meta["state"] == RUNNING:
            self._send_control(meta["owner"], b"stop", run_id.encode())
        return _status(run_id, meta)

    def attach_reader(self, run_id: str, doorbell: gevent.event.Event) -> None:
        """Count a reader in; a run produced elsewhere is added to what the waiter watches."""
        run = self._runs.get(run_id)
        if run is None:
            meta = self._meta_of(run_id)
            if meta is None:
                raise RunNotFound(run_id)
            # Another reader of this worker may have joined during that round trip: share its copy.
            run = self._runs.get(run_id)
            if run is None:
                # Watch from the last event Redis holds now; older events are read from Redis directly.
                run = _LocalRun(
                    run_id, meta["model"], produced_here=False, owner=meta["owner"], base_id=int(meta["last"])
                )
                run.state = meta["state"]
                self._runs[run_id] = run
                if run.state == RUNNING:
                    # Registered first, then the wake: a waiter woken earlier would not see the run.
                    self._send_control(self.worker_id, b"wake", b"")
        if not run.doorbells and not run.produced_here:
            # The producing worker counts its own readers; others tell it through Redis.
            self._presence[run_id] = True
            self._writer_wake.set()
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
            self._presence[run_id] = False
            self._writer_wake.set()
        if not run.produced_here or run.lost or (run.final is not None and not run.pending):
            self._forget(run)

    def check_health(self) -> None:
        """Ping Redis; raise StoreUnavailable if it does not answer."""
        try:
            self._redis.ping()
        except _STORE_ERRORS as err:
            raise StoreUnavailable(f"Redis cannot be reached: {type(err).__name__}") from None

    @property
    def client(self) -> redis.Redis:
        """The pooled client, for what shares this worker's Redis connections (the request guards)."""
        return self._redis

    def close(self) -> None:
        """Write what is queued (for at most a second), give up the lease, and stop the greenlets."""
        if self._dirty or self._presence:
            self._flushed.clear()
            self._writer_wake.set()
            self._flushed.wait(timeout=1.0)
        gevent.killall(self._greenlets, block=True, timeout=1.0)
        with contextlib.suppress(RedisError):  # if Redis is gone, the lease runs out by itself
            self._redis.delete(_lease(self.worker_id), _control(self.worker_id))
        self._redis.close()
        self._waiter_redis.close()
        self._lease_redis.close()
        if self._writer_connection is not None:
            self._writer_connection.disconnect()

    # --- the writer -------------------------------------------------------------------------------

    def _write_forever(self) -> None:
        """Send queued events in pipelined round trips: at once when idle, batched when busy."""
        while True:
            self._writer_wake.wait()
            self._writer_wake.clear()
            while self._dirty or self._presence:
                batch, self._dirty = self._dirty, {}
                presence, self._presence = self._presence, {}
                self._write(batch, presence)
            self._flushed.set()

    def _write(self, batch: dict[str, _LocalRun], presence: dict[str, bool]) -> None:
        writes = []
        keys: list = [_lease(self.worker_id)]
        args: list = [self.worker_id, self.ttl_ms, self.event_log_size]
        now = time.monotonic()
        for run in batch.values():
            items, run.pending = run.pending, []
            if not items or run.lost:
                continue
            final = run.final if items[-1][1] in TERMINAL_EVENTS else None
            state, reason, code = final or ("", None, None)
            # The sliding TTL needs no refresh per token: once every TTL_REFRESH_SECONDS is plenty.
            refresh = final is not None or now - run.ttl_refreshed_at >= self.ttl_refresh_seconds
            if refresh:
                run.ttl_refreshed_at = now
            keys += [_meta(run.id), _events(run.id)]
            args += [len(items), "1" if refresh else "", state, reason or "", code or ""]
            for event_id, name, frame in items:
                args += [event_id, name, frame]
            writes.append((run, items, final))
        commands: list[tuple] = []
        for run_id, present in presence.items():
            if present:
                commands.append(("HSET", _readers(run_id), self.worker_id, 1))
                commands.append(("PEXPIRE", _readers(run_id), self.ttl_ms))
            else:
                commands.append(("HDEL", _readers(run_id), self.worker_id))
        try:
            if writes:
                commands.insert(0, ("EVALSHA", self._sha("APPEND"), len(keys), *keys, *args))
            replies = self._round_trip(commands)
        except RedisError as err:
            # Not retried: a batch that may have been half applied must not be written twice. The
            # housekeeper ends these runs in Redis too, once it can (_settle_abandoned).
            log.warning("run store: Redis write failed, %d runs lost: %s", len(writes), err)
            for run, _, _ in writes:
                self._lose(run, FailCode.STORE_UNAVAILABLE)
            for run_id, present in presence.items():
                self._presence.setdefault(run_id, present)  # idempotent: told again next time
            gevent.sleep(self.tick_seconds)  # no busy loop while Redis is away
            return
        results = replies[0] if writes else []
        for (run, items, final), written in zip(writes, results, strict=True):
            if run.lost:
                continue  # lost while this batch was in flight: its readers already got their end
            if written != 1:
                # 0: fenced (the run was declared lost while this worker could not renew its lease);
                # -1: Redis no longer has the run (it restarted without its data).
                fenced = written == 0
                log.warning("run %s: %s; it ends here", run.id, "fenced out" if fenced else "gone from Redis")
                self._lose(run, FailCode.WORKER_LOST if fenced else FailCode.STORE_UNAVAILABLE)
                continue
            run.events.extend(StoredEvent(event_id, name, frame) for event_id, name, frame in items)
            self._trim(run)
            if final is not None:
                run.state, run.finish_reason, run.code = final
            self._ring(run)
            if final is not None and not run.doorbells:
                self._forget(run)

    def _lose(self, run: _LocalRun, code: FailCode) -> None:
        """End a run produced here that Redis no longer takes: its local readers get a fail without id."""
        if run.lost:
            return
        if run.final is None:
            self._producing_count -= 1
        run.lost = True
        run.pending.clear()
        if code == FailCode.STORE_UNAVAILABLE:
            # Redis may still say "running", with this worker's lease alive: end it there too.
            self._abandoned.add(run.id)
        run.synthetic = StoredEvent(run.last_id, FAIL, unlogged_fail(code))
        run.state, run.code = STATE_FAILED, str(code)
        self._ring(run)
        self._stop_local(run)  # the producer closes its upstream; the housekeeper forgets the run

    # --- the waiter -------------------------------------------------------------------------------

    def _wait_forever(self) -> None:
        """Block in one XREAD on the control stream and every run read here but produced elsewhere."""
        control = _control(self.worker_id)
        control_id = None
        while True:
            try:
                if control_id is None:
                    # A message id to read after: XREAD from "$" would miss what arrives between calls.
                    control_id = self._waiter_redis.xadd(
                        control, {b"wake": b""}, maxlen=CONTROL_STREAM_LENGTH, approximate=True
                    )
                    self._waiter_redis.pexpire(control, CONTROL_STREAM_TTL_MS)
                watched = {
                    _events(run.id): f"0-{run.last_id}"
                    for run in self._runs.values()
                    if not run.produced_here and run.state == RUNNING and run.doorbells and not run.catch_up
                }
                replies = self._waiter_redis.xread({control: control_id, **watched}, block=WAIT_BLOCK_MS)
            except RedisError as err:  # unreachable, or any other refusal: never let the waiter die
                log.warning("run store: the waiter lost Redis: %s", err)
                self._lose_watched()
                # control_id is kept: a stop sent meanwhile is still read (entry ids grow with time).
                gevent.sleep(min(1.0, self.tick_seconds * 2))
                continue
            for key, entries in replies or []:
                if key.decode() == control:
                    control_id = entries[-1][0]
                    self._obey(entries)
                else:
                    self._deliver(key.decode().split("{", 1)[1].split("}", 1)[0], entries)

    def _deliver(self, run_id: str, entries: list) -> None:
        run = self._runs.get(run_id)
        if run is None or run.produced_here:
            return
        for entry in entries:
            event = _stored(entry)
            if event.id > run.last_id + 1:
                run.catch_up = True  # trimmed past what this worker has: readers read Redis (a 409)
                break
            if event.id == run.last_id + 1:
                run.events.append(event)
                if event.name in TERMINAL_EVENTS:
                    run.state = STATE_FAILED if event.name == FAIL else STATE_DONE
        self._trim(run)
        self._ring(run)

    def _obey(self, entries: list) -> None:
        """Act on control messages: ``stop`` a run produced here (``wake`` only wakes the waiter)."""
        for _, fields in entries:
            run_id = fields.get(b"stop")
            if run_id is not None:
                run = self._runs.get(run_id.decode())
                if run is not None and run.produced_here:
                    self._stop_local(run)

    def _lose_watched(self) -> None:
        """Redis is gone: every reader here of a run produced elsewhere gets a fail without id."""
        frame = unlogged_fail(FailCode.STORE_UNAVAILABLE)
        for run in list(self._runs.values()):
            if not run.produced_here and run.state == RUNNING:
                run.synthetic = StoredEvent(run.last_id, FAIL, frame)
                run.state, run.code = STATE_FAILED, str(FailCode.STORE_UNAVAILABLE)
                self._ring(run)

    # --- the housekeeper --------------------------------------------------------------------------

    def _housekeep_forever(self) -> None:
        """Renew the lease, stop runs nobody reads, end runs whose producer is gone; every tick."""
        while True:
            for run in [run for run in self._runs.values() if run.lost and not run.doorbells]:
                self._forget(run)  # kept for a tick, so that its producer learns it was lost
            try:
                self._lease_redis.set(_lease(self.worker_id), b"1", px=self.lease_ms)
            except RedisError as err:
                # Without its lease this worker will look dead to the others: its runs end here.
                log.warning("run store: cannot renew this worker's lease: %s", err)
                for run in list(self._runs.values()):
                    if run.produced_here and not run.lost and run.state == RUNNING:
                        self._lose(run, FailCode.STORE_UNAVAILABLE)
            else:
                try:
                    self._settle_abandoned()
                    self._housekeep()
                except (RedisError, StoreUnavailable) as err:
                    log.warning("run store: housekeeping failed this tick: %s", err)
            gevent.sleep(self.tick_seconds)

    def _settle_abandoned(self) -> None:
        """End in Redis, as ``store_unavailable``, the runs this worker lost (Redis was away)."""
        if not self._abandoned:
            return
        frame = unlogged_fail(FailCode.STORE_UNAVAILABLE)  # the script puts its id line before it
        run_ids = sorted(self._abandoned)
        with self._lease_redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                keys = [_meta(run_id), _events(run_id)]
                args = [self.worker_id, self.ttl_ms, self.event_log_size, frame, FailCode.STORE_UNAVAILABLE]
                self._call(pipe, "ABANDON", keys, args)
            self._execute(pipe)
        self._abandoned.difference_update(run_ids)

    def _housekeep(self) -> None:
        now = time.monotonic()
        unread = [
            run
            for run in self._runs.values()
            if run.produced_here and run.final is None and not run.lost and not run.doorbells
        ]
        remote = [run for run in self._runs.values() if not run.produced_here and run.state == RUNNING]
        if not unread and not remote:
            return
        with self._lease_redis.pipeline(transaction=False) as pipe:
            for run in unread:
                pipe.hgetall(_readers(run.id))
            replies = self._execute(pipe)
        owners = {run.owner for run in remote}
        for readers in replies:
            owners.update(worker.decode() for worker in readers)
        alive = self._leases_alive(owners - {self.worker_id})
        alive.add(self.worker_id)
        for run, readers in zip(unread, replies, strict=True):
            if any(worker.decode() in alive for worker in readers):
                run.last_read_at = now
            elif now - run.last_read_at >= self.grace_seconds:
                log.info("run %s: nobody reads it anywhere; stopping it", run.id)
                self._stop_local(run)
        for run in remote:
            if run.owner not in alive:
                self._meta_of(run.id, self._lease_redis)  # ends it as worker_lost; the waiter brings it

    # --- helpers ----------------------------------------------------------------------------------

    def _stop_local(self, run: _LocalRun) -> None:
        run.stop_requested = True
        callbacks, run.stop_callbacks = run.stop_callbacks, []
        for callback in callbacks:
            callback()

    def _settle(self, pipe: redis.client.Pipeline, run_id: str) -> None:
        """Queue SETTLE: the run's meta, after ending it as ``worker_lost`` if its owner is gone."""
        frame = unlogged_fail(FailCode.WORKER_LOST)  # the script puts its id line before it
        args = [self.ttl_ms, self.event_log_size, frame, FailCode.WORKER_LOST]
        self._call(pipe, "SETTLE", [_meta(run_id), _events(run_id)], args)

    def _meta_of(self, run_id: str, client: redis.Redis | None = None) -> dict[str, str] | None:
        """Return the run's meta (None if unknown), settled: a run whose owner is gone has ended."""
        try:
            with (client or self._redis).pipeline(transaction=False) as pipe:
                self._settle(pipe, run_id)
                return _as_meta(self._execute(pipe)[0])
        except _STORE_ERRORS as err:
            raise StoreUnavailable(f"Redis cannot be reached: {err}") from None

    def _leases_alive(self, workers: set[str]) -> set[str]:
        if not workers:
            return set()
        ordered = sorted(workers)
        try:
            with self._lease_redis.pipeline(transaction=False) as pipe:  # the housekeeper's own
                for worker in ordered:
                    pipe.exists(_lease(worker))
                found = self._execute(pipe)
        except _STORE_ERRORS as err:
            raise StoreUnavailable(f"Redis cannot be reached: {err}") from None
        return {worker for worker, exists in zip(ordered, found, strict=True) if exists}

    def _send_control(self, worker_id: str, kind: bytes, value: bytes) -> None:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                self._control_message(pipe, worker_id, kind, value)
                self._execute(pipe)
        except _STORE_ERRORS as err:
            raise StoreUnavailable(f"Redis cannot be reached: {err}") from None

    def _control_message(
        self, pipe: redis.client.Pipeline, worker_id: str, kind: bytes, value: bytes
    ) -> None:
        pipe.xadd(_control(worker_id), {kind: value}, maxlen=CONTROL_STREAM_LENGTH, approximate=True)
        pipe.pexpire(_control(worker_id), CONTROL_STREAM_TTL_MS)

    def _round_trip(self, commands: list[tuple]) -> list:
        """Send the writer's commands in one round trip on its own connection; return their replies.

        If Redis lost the scripts (a restart), load them and send once more: NOSCRIPT means the
        script did nothing, and the other commands (HSET, HDEL, PEXPIRE) may safely run twice.
        """
        replies = self._send_on_writer_connection(commands)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            self._load_scripts()
            replies = self._send_on_writer_connection(commands)
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    def _send_on_writer_connection(self, commands: list[tuple]) -> list:
        if not commands:
            return []
        connection = self._writer_connection
        if connection is None:
            connection = self._writer_connection = self._writer_pool.get_connection()
        if time.monotonic() - self._writer_used_at > WRITER_IDLE_CHECK_SECONDS:
            # Redis's `timeout`, or a NAT, may have closed an idle connection. A PING that fails
            # proves nothing was sent, so reconnecting is safe; a write that fails is never resent.
            try:
                connection.send_command("PING")
                connection.read_response()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                connection.disconnect()
        self._writer_used_at = time.monotonic()
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            replies: list = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except ResponseError as err:  # a refusal of one command: read in full, the rest follow
                    replies.append(err)
            return replies
        except BaseException:
            connection.disconnect()  # never reuse a connection with a reply left half read
            raise

    def _sha(self, name: str) -> str:
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = self._redis.script_load(self._scripts[name])
        return sha

    def _load_scripts(self) -> None:
        self._shas.clear()
        for name, script in self._scripts.items():
            self._shas[name] = self._redis.script_load(script)

    def _call(self, pipe: redis.client.Pipeline, name: str, keys: list, args: list) -> None:
        """Queue a script by its SHA (loaded once; _execute reloads it if Redis forgot it)."""
        pipe.evalsha(self._sha(name), len(keys), *keys, *args)

    def _execute(self, pipe: redis.client.Pipeline) -> list:
        """Run a pipeline; if Redis lost the scripts (a restart), load them and run it once more.

        NOSCRIPT means that call did nothing, so running the pipeline again writes nothing twice:
        every other command in our pipelines is idempotent (SET, HSET, HDEL, PEXPIRE, reads).
        """
        commands = list(pipe.command_stack)
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(result, NoScriptError) for result in results):
            self._load_scripts()
            pipe.command_stack = commands
            results = pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, RedisError):
                raise result
        return results

    def _trim(self, run: _LocalRun) -> None:
        # In batches, like the memory store, so dropping old events is amortised over many appends.
        if len(run.events) > 2 * self.event_log_size:
            drop = len(run.events) - self.event_log_size
            run.base_id = run.events[drop - 1].id
            del run.events[:drop]

    def _ring(self, run: _LocalRun) -> None:
        for doorbell in run.doorbells:
            doorbell.set()

    def _forget(self, run: _LocalRun) -> None:
        if self._runs.get(run.id) is run:
            del self._runs[run.id]
