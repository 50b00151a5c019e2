"""The housekeeper: one greenlet per worker keeps this worker's promises to the others, every tick.

Every tick it:

- renews this worker's lease (``sc:worker:WID``). The lease is what tells the other workers that
  this one lives; the APPEND script checks it, so a worker that was paused past its lease cannot
  write into a run that was declared lost meanwhile (the fence). If it cannot be renewed, this
  worker will look dead to the others, so the runs produced here end here at once;
- ends in Redis, as ``store_unavailable``, the runs this worker gave up on while Redis was away
  (redis_lua.ABANDON), so that a reader elsewhere does not wait for their lease to run out;
- stops the runs produced here that nobody reads anywhere for DISCONNECT_GRACE_SECONDS: readers
  here are counted here, readers elsewhere through ``sc:{RUN}:readers`` (kept by their workers'
  writers), and a worker counts only while its lease lives;
- ends, as ``worker_lost``, the runs read here whose producer's lease has run out
  (redis_lua.SETTLE, which does it once, whoever asks); the waiter then brings the ``fail`` to the
  readers. A dead producer is so noticed within WORKER_LOST_SECONDS: its lease lasts 2/3 of it;
- keeps alive the keys it answers for, once half their TTL has gone by since their last PEXPIRE:
  the meta and events of each live run produced here, and the readers hash of each live run read
  here for a producer elsewhere. The writer refreshes a run's keys only when it writes, and tells a
  run's readers only when they come and go: without this, a model quiet for RUN_TTL_SECONDS (a
  long think) would find its run gone from Redis, and a run read only on other workers for that
  long would look unread to its producer, which would stop it mid-answer. So a key expires
  RUN_TTL_SECONDS after the run ended, or after the worker that kept it alive is gone.

It has its own connection: the lease must be renewed on time even when every pooled connection is
busy with readers (a missed renewal would make this worker look dead).
"""

from __future__ import annotations

import logging
import time

import gevent
from redis.exceptions import RedisError

from streamchat.protocol import RUNNING, FailCode
from streamchat.runs.redis_client import COMMAND_TIMEOUT_SECONDS, Scripts, make_client
from streamchat.runs.redis_keys import events_key, lease_key, meta_key, readers_key
from streamchat.runs.redis_local import LocalRuns
from streamchat.runs.store import StoreUnavailable, unlogged_fail

log = logging.getLogger(__name__)


class Housekeeper:
    """Every tick: renew the lease, stop runs nobody reads, end those whose producer is gone, keep keys."""

    def __init__(
        self,
        url: str,
        runs: LocalRuns,
        scripts: Scripts,
        worker_id: str,
        *,
        lease_ms: int,
        grace_seconds: float,
        tick_seconds: float,
    ) -> None:
        self.client = make_client(url, 1, COMMAND_TIMEOUT_SECONDS, "housekeeper")  # its own: see above
        self.runs = runs
        self.scripts = scripts
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self.grace_seconds = grace_seconds
        self.tick_seconds = tick_seconds

    def run_forever(self) -> None:
        """Do the tick's work, then sleep a tick; forever."""
        while True:
            for run in [run for run in self.runs.by_id.values() if run.lost and not run.doorbells]:
                self.runs.forget(run)  # kept for a tick, so that its producer learns it was lost
            try:
                self.client.set(lease_key(self.worker_id), b"1", px=self.lease_ms)
            except RedisError as err:
                # Without its lease this worker will look dead to the others: its runs end here.
                log.warning("run store: cannot renew this worker's lease: %s", err)
                for run in self.runs.all():
                    if run.produced_here and not run.lost and run.state == RUNNING:
                        self.runs.lose(run, FailCode.STORE_UNAVAILABLE)
            else:
                try:
                    self._settle_abandoned()
                    self._housekeep()
                except (RedisError, StoreUnavailable) as err:
                    log.warning("run store: housekeeping failed this tick: %s", err)
            gevent.sleep(self.tick_seconds)

    def close(self) -> None:
        """Let go of the housekeeper's connection."""
        self.client.close()

    def _settle_abandoned(self) -> None:
        """End in Redis, as ``store_unavailable``, the runs this worker lost (Redis was away)."""
        if not self.runs.abandoned:
            return
        frame = unlogged_fail(FailCode.STORE_UNAVAILABLE)  # the script puts its id line before it
        run_ids = sorted(self.runs.abandoned)
        scripts = self.scripts
        args = [self.worker_id, scripts.ttl_ms, scripts.event_log_size, frame, FailCode.STORE_UNAVAILABLE]
        with self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                scripts.call(pipe, "ABANDON", [meta_key(run_id), events_key(run_id)], args)
            scripts.execute(pipe)
        self.runs.abandoned.difference_update(run_ids)

    def _housekeep(self) -> None:
        now = time.monotonic()
        runs = list(self.runs.by_id.values())
        live_here = [run for run in runs if run.produced_here and run.final is None and not run.lost]
        unread = [run for run in live_here if not run.doorbells]
        remote = [run for run in runs if not run.produced_here and run.state == RUNNING]
        # Never before the writer's first write of a run (ttl_refreshed_at 0): that write creates the
        # events stream and gives it its TTL, which a PEXPIRE sent earlier would find missing.
        half_ttl = self.scripts.ttl_ms / 2000
        fading = [
            run
            for run in live_here + [run for run in remote if run.doorbells]
            if run.ttl_refreshed_at and now - run.ttl_refreshed_at >= half_ttl
        ]
        if not unread and not remote and not fading:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for run in unread:
                pipe.hgetall(readers_key(run.id))
            for run in fading:
                keys = [meta_key(run.id), events_key(run.id)] if run.produced_here else [readers_key(run.id)]
                for key in keys:
                    pipe.pexpire(key, self.scripts.ttl_ms)
            replies = self.scripts.execute(pipe)[: len(unread)]
        for run in fading:
            run.ttl_refreshed_at = now
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
                run.stop()
        for run in remote:
            if run.owner not in alive:
                self.scripts.meta_of(self.client, run.id)  # ends it as worker_lost; the waiter brings it

    def _leases_alive(self, workers: set[str]) -> set[str]:
        if not workers:
            return set()
        ordered = sorted(workers)
        with self.client.pipeline(transaction=False) as pipe:
            for worker in ordered:
                pipe.exists(lease_key(worker))
            found = self.scripts.execute(pipe)
        return {worker for worker, exists in zip(ordered, found, strict=True) if exists}
