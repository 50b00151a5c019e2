"""The writer: one greenlet per worker sends every append of every run produced here to Redis.

Where it sits: the producer greenlets queue events through the store (``RedisRunStore.append``
and friends), which hands them here; the writer sends them, then rings the run's local readers.

Deliberate choices:

- **At once when idle, batched when busy.** A token goes to Redis as soon as the writer is idle;
  what piles up while a round trip is in flight goes in the next one, one APPEND script call for
  the whole batch (redis_lua.APPEND: the lease checked once, then each run's events in order), so
  a busy worker sends many tokens per round trip. Token order and ids stay exact: a run's ids are
  handed out when the event is queued, and a run's events leave in that order.
- **A busy writer gathers for a moment.** When more was queued while a round trip was in flight,
  the next one starts no sooner than BUSY_INTERVAL_SECONDS after the last one started: a round
  trip's cost (two system calls and a greenlet switch here, a read, a script call and a write in
  Redis) is then shared by several times as many tokens: 12 to 14 instead of 5 at 100 streams in
  the benchmark, for 1.4 times the memory store's CPU per token instead of 1.6
  (docs/performance.md). The price is up to that long between two tokens, under load only: a
  run's ``start``, its first token and its end never wait: they go at once, in a small round trip
  of their own that leaves the gathered batch behind (so that their readers are not rung after a
  dozen other runs' tokens), and an idle writer never waits at all.
- **Local readers are rung only once Redis has the event**: a reader never sends what the log
  does not hold (docs/design.md).
- **Its own connection, used directly** (redis-py's ``send_packed_command`` and
  ``read_response``): it is the hot path, and a pipeline, a pool checkout and a retry wrapper per
  round trip were most of its cost in the benchmark's profile. A connection idle for a while is
  checked with a PING first; a connection with a reply left half read is never reused.
- **Few arguments per run**: redis-py packs a command argument by argument in Python, which was
  the largest part of the writer's cost left in the profile. So a run's ids and event names go as
  one "spec" argument, and only its frames go one argument each (redis_lua.APPEND).
- **A failed write is not retried**: a batch that may have been half applied must not be written
  twice. Its runs end with ``store_unavailable`` here at once, and in Redis once the housekeeper
  can (redis_housekeeper.py).
- It also tells Redis which runs produced elsewhere have readers here (``sc:{RUN}:readers``), so
  that the producing worker's grace period counts every reader everywhere.
"""

from __future__ import annotations

import logging
import time

import gevent
import gevent.event
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamchat.protocol import TERMINAL_EVENTS, TOKEN, FailCode
from streamchat.runs.redis_client import COMMAND_TIMEOUT_SECONDS, Scripts, make_client
from streamchat.runs.redis_keys import events_key, lease_key, meta_key, readers_key
from streamchat.runs.redis_local import LocalRun, LocalRuns
from streamchat.runs.store import StoredEvent

log = logging.getLogger(__name__)

# A writer connection idle for longer than this is checked with a PING before it carries a write.
WRITER_IDLE_CHECK_SECONDS = 1.0
# A busy writer starts a round trip at most this often (see the module docstring).
BUSY_INTERVAL_SECONDS = 0.008


class Writer:
    """Send queued events and reader presence to Redis in pipelined round trips."""

    def __init__(
        self,
        url: str,
        runs: LocalRuns,
        scripts: Scripts,
        worker_id: str,
        *,
        ttl_refresh_seconds: float,
        pause_seconds: float,
    ) -> None:
        self.runs = runs
        self.scripts = scripts
        self.worker_id = worker_id
        self.ttl_refresh_seconds = ttl_refresh_seconds
        self.pause_seconds = pause_seconds  # after a failed write: no busy loop while Redis is away
        # Its own connection, taken from its one-connection pool once and kept.
        self._pool = make_client(url, 1, COMMAND_TIMEOUT_SECONDS, "writer").connection_pool
        self._connection: redis.connection.AbstractConnection | None = None
        self._used_at = 0.0
        self._dirty: dict[str, LocalRun] = {}  # runs with events to write, in order
        self._presence: dict[str, bool] = {}  # run id -> has local readers, for Redis to know
        self._wake = gevent.event.Event()
        self._urgent = gevent.event.Event()  # an event that must not wait for a busy writer's batch
        self._urgent_runs: dict[str, LocalRun] = {}  # the runs that have one queued
        self._flushed = gevent.event.Event()

    def queue(self, run: LocalRun, name: str, frame: bytes) -> int:
        """Queue an event of a run produced here; return its id."""
        event_id = run.next_id
        run.next_id += 1
        run.pending.append((event_id, name, frame))
        self._dirty[run.id] = run
        self._wake.set()
        if name != TOKEN:
            self._urgent_runs[run.id] = run  # a run's start and end never wait for a busy writer
            self._urgent.set()
        elif not run.token_queued:
            run.token_queued = True
            self._urgent_runs[run.id] = run  # nor does its first token (the time to first token)
            self._urgent.set()
        return event_id

    def tell_presence(self, run_id: str, present: bool) -> None:
        """Queue telling Redis whether this worker has readers of a run produced elsewhere."""
        self._presence[run_id] = present
        self._wake.set()

    def flush(self, timeout: float) -> None:
        """Wait until what is queued or being sent now is written, for at most ``timeout`` seconds."""
        # Always a turn of the writer, even with nothing queued: a batch already taken may be
        # waiting for Redis's reply, and close() after a flush that did not wait for it would kill
        # it mid-way (a run's end lost). An idle writer's turn ends at once.
        self._flushed.clear()
        self._wake.set()
        self._flushed.wait(timeout=timeout)

    def close(self) -> None:
        """Let go of the writer's connection."""
        if self._connection is not None:
            self._connection.disconnect()

    def run_forever(self) -> None:
        """Send queued events in pipelined round trips: at once when idle, batched when busy."""
        while True:
            self._wake.wait()
            self._wake.clear()
            urgent_only = False
            gathering_since = 0.0
            while self._dirty or self._presence:
                self._urgent.clear()
                if urgent_only:
                    # Woken while gathering by a start, a first token or an end: those runs go at
                    # once, in a small round trip of their own, and the rest go on gathering.
                    batch = {rid: self._dirty.pop(rid) for rid in self._urgent_runs if rid in self._dirty}
                    presence = {}
                else:
                    gathering_since = time.monotonic()
                    batch, self._dirty = self._dirty, {}
                    presence, self._presence = self._presence, {}
                self._urgent_runs.clear()
                self._write(batch, presence)
                # Busy (more was queued meanwhile): gather until BUSY_INTERVAL_SECONDS after the last
                # whole batch started, unless an urgent event comes first.
                left = gathering_since + BUSY_INTERVAL_SECONDS - time.monotonic()
                urgent_only = bool(self._dirty) and left > 0 and self._urgent.wait(timeout=left)
            self._flushed.set()

    def _write(self, batch: dict[str, LocalRun], presence: dict[str, bool]) -> None:
        scripts, worker_id = self.scripts, self.worker_id
        writes = []
        keys: list = [lease_key(worker_id)]
        args: list = [worker_id, scripts.ttl_ms, scripts.event_log_size]
        now = time.monotonic()
        for run in batch.values():
            items, run.pending = run.pending, []
            if not items or run.lost:
                continue
            final = run.final if items[-1][1] in TERMINAL_EVENTS else None
            # The sliding TTL needs no refresh per token: once every TTL_REFRESH_SECONDS is plenty.
            if final is not None:
                flag = "end"
            elif now - run.ttl_refreshed_at >= self.ttl_refresh_seconds:
                flag = "ttl"
            else:
                flag = "-"
            if flag != "-":
                run.ttl_refreshed_at = now
            keys += [meta_key(run.id), events_key(run.id)]
            args.append(" ".join([str(items[0][0]), flag, *(name for _, name, _ in items)]))
            if final is not None:
                state, reason, code = final
                args += [state, reason or "", code or ""]
            args += [frame for _, _, frame in items]
            writes.append((run, items, final))
        commands: list[tuple] = []
        for run_id, present in presence.items():
            if present:
                commands.append(("HSET", readers_key(run_id), worker_id, 1))
                commands.append(("PEXPIRE", readers_key(run_id), scripts.ttl_ms))
            else:
                commands.append(("HDEL", readers_key(run_id), worker_id))
        try:
            if writes:
                commands.insert(0, ("EVALSHA", scripts.sha("APPEND"), len(keys), *keys, *args))
            replies = self._round_trip(commands)
        except RedisError as err:
            # Not retried: see the module docstring. The housekeeper ends these runs in Redis too.
            log.warning("run store: Redis write failed, %d runs lost: %s", len(writes), err)
            for run, _, _ in writes:
                self.runs.lose(run, FailCode.STORE_UNAVAILABLE)
            for run_id, present in presence.items():
                self._presence.setdefault(run_id, present)  # idempotent: told again next time
            gevent.sleep(self.pause_seconds)
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
                self.runs.lose(run, FailCode.WORKER_LOST if fenced else FailCode.STORE_UNAVAILABLE)
                continue
            run.events.extend(StoredEvent(event_id, name, frame) for event_id, name, frame in items)
            run.trim(scripts.event_log_size)
            if final is not None:
                run.state, run.finish_reason, run.code = final
            run.ring()
            if final is not None and not run.doorbells:
                self.runs.forget(run)

    def _round_trip(self, commands: list[tuple]) -> list:
        """Send the commands in one round trip on the writer's connection; return their replies.

        If Redis lost the scripts (a restart), they are loaded and the commands sent once more
        (Scripts.send_reloading): the other commands (HSET, HDEL, PEXPIRE) may safely run twice.
        """
        return self.scripts.send_reloading(lambda: self._send(commands))

    def _send(self, commands: list[tuple]) -> list:
        if not commands:
            return []
        connection = self._connection
        if connection is None:
            connection = self._connection = self._pool.get_connection()
        if time.monotonic() - self._used_at > WRITER_IDLE_CHECK_SECONDS:
            # Redis's `timeout`, or a NAT, may have closed an idle connection. A PING that fails
            # proves nothing was sent, so reconnecting is safe; a write that fails is never resent.
            try:
                connection.send_command("PING")
                connection.read_response()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                connection.disconnect()
        self._used_at = time.monotonic()
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
