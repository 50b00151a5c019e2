"""The waiter: one greenlet per worker waits on every run read here but produced elsewhere.

Readers wait without a Redis connection each: a reader of a run produced by another worker only
waits on its doorbell, and this one greenlet blocks in a single ``XREAD`` on the events of all such
runs, plus this worker's control stream (``sc:ctl:WID``). What arrives is added to the worker's copy
of the run (redis_local.py) and the local readers are rung. The control stream wakes it when a
reader joins (so that the next ``XREAD`` watches the new run too) and carries stop requests from
other workers for runs produced here.

Deliberate choices:

- **Its own connection, with a socket timeout longer than its ``BLOCK``**, or every quiet wait
  would end as a timeout error; and a killed reader greenlet never leaves a half-read reply on a
  pooled connection, since readers never touch this one.
- **Never dies**: if Redis is unreachable, or refuses, the readers here of runs produced elsewhere
  get a ``fail`` ``store_unavailable`` without an id, and it tries again a tick later.
- **A gap is not papered over**: if Redis trimmed past what this worker has, the run's readers
  read Redis directly (``catch_up``), which gives them the 409 of a trimmed resume.
"""

from __future__ import annotations

import logging

import gevent
import redis
from redis.exceptions import RedisError

from streamchat.protocol import RUNNING, TERMINAL_EVENTS
from streamchat.runs.redis_client import COMMAND_TIMEOUT_SECONDS, make_client
from streamchat.runs.redis_keys import control_key, events_key, run_of_events_key, stored
from streamchat.runs.redis_local import LocalRuns
from streamchat.runs.store import terminal_outcome
from streamchat.sse import frame_data

log = logging.getLogger(__name__)

# How long the waiter's XREAD blocks before it loops (its socket timeout is longer).
WAIT_BLOCK_MS = 2000
# Control streams are short: a message is read within a round trip of being sent.
CONTROL_STREAM_LENGTH = 1000
CONTROL_STREAM_TTL_MS = 3_600_000


def send_control(pipe: redis.client.Pipeline, worker_id: str, kind: bytes, value: bytes) -> None:
    """Queue a message to a worker's waiter: ``wake`` (b"") or ``stop`` (a run id)."""
    pipe.xadd(control_key(worker_id), {kind: value}, maxlen=CONTROL_STREAM_LENGTH, approximate=True)
    pipe.pexpire(control_key(worker_id), CONTROL_STREAM_TTL_MS)


class Waiter:
    """Block in one XREAD on the control stream and every run read here but produced elsewhere."""

    def __init__(
        self, url: str, runs: LocalRuns, worker_id: str, *, event_log_size: int, pause_seconds: float
    ) -> None:
        # Its own connection: see the module docstring.
        self.client = make_client(url, 1, WAIT_BLOCK_MS / 1000 + COMMAND_TIMEOUT_SECONDS, "waiter")
        self.runs = runs
        self.worker_id = worker_id
        self.event_log_size = event_log_size
        self.pause_seconds = pause_seconds  # after Redis failed it

    def run_forever(self) -> None:
        """Wait, deliver, obey; forever."""
        control = control_key(self.worker_id)
        control_id = None
        while True:
            try:
                if control_id is None:
                    # A message id to read after: XREAD from "$" would miss what arrives between calls.
                    with self.client.pipeline(transaction=False) as pipe:
                        send_control(pipe, self.worker_id, b"wake", b"")
                        control_id = pipe.execute()[0]
                watched = {
                    events_key(run.id): f"0-{run.last_id}"
                    for run in self.runs.by_id.values()
                    if not run.produced_here and run.state == RUNNING and run.doorbells and not run.catch_up
                }
                replies = self.client.xread({control: control_id, **watched}, block=WAIT_BLOCK_MS)
            except RedisError as err:  # unreachable, or any other refusal: never let the waiter die
                log.warning("run store: the waiter lost Redis: %s", err)
                self.runs.lose_read()
                # control_id is kept: a stop sent meanwhile is still read (entry ids grow with time).
                gevent.sleep(self.pause_seconds)
                continue
            for key, entries in replies or []:
                if key.decode() == control:
                    control_id = entries[-1][0]
                    self._obey(entries)
                else:
                    self._deliver(run_of_events_key(key), entries)

    def close(self) -> None:
        """Let go of the waiter's connection."""
        self.client.close()

    def _deliver(self, run_id: str, entries: list) -> None:
        run = self.runs.get(run_id)
        if run is None or run.produced_here:
            return
        for entry in entries:
            event = stored(entry)
            if event.id > run.last_id + 1:
                run.catch_up = True  # trimmed past what this worker has: readers read Redis (a 409)
                break
            if event.id == run.last_id + 1:
                run.events.append(event)
                if event.name in TERMINAL_EVENTS:
                    run.state, run.finish_reason, run.code = terminal_outcome(
                        event.name, frame_data(event.frame)
                    )
        run.trim(self.event_log_size)
        run.ring()

    def _obey(self, entries: list) -> None:
        """Act on control messages: ``stop`` a run produced here (``wake`` only wakes the waiter)."""
        for _, fields in entries:
            run_id = fields.get(b"stop")
            if run_id is not None:
                run = self.runs.get(run_id.decode())
                if run is not None and run.produced_here:
                    run.stop()
