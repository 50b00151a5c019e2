"""A worker's last minutes: how runs end when gunicorn stops or reloads the worker.

Where it sits: gunicorn.conf.py's hooks call ``begin_shutdown`` as soon as the worker is told to stop
(SIGTERM, or SIGHUP's graceful reload, which ends old workers with SIGTERM) and ``finish_shutdown``
when gunicorn's gevent worker has stopped serving. The producer registers each run's greenlet here,
and each reader its doorbell.

What a user sees (docs/deployment.md, "Restarts"):

- A run produced here may finish within GRACEFUL_TIMEOUT. One still live shortly before the deadline
  ends with ``fail`` ``shutdown`` (retryable), never a silent cut: at the deadline the arbiter
  SIGKILLs the worker, and the run would only be noticed later as ``worker_lost``.
- A reader here of a run produced by another process gets a ``retry:`` hint and a close, so that its
  client resumes on another worker with ``Last-Event-ID``, nothing lost and nothing repeated.

The trap this avoids: gunicorn's gevent worker returns from its serving loop as soon as it holds no
open connection. A worker whose readers all went elsewhere would then exit with its producers still
running, and their runs would end as ``worker_lost``. ``finish_shutdown`` waits for them first.
"""

from __future__ import annotations

import logging
import time

import gevent
import gevent.event

log = logging.getLogger(__name__)


class ShutdownRun(gevent.GreenletExit):
    """Thrown into a producer greenlet whose worker is stopping: the run ends with ``shutdown``."""


class Lifecycle:
    """This worker's live producers and readers, and whether the worker is stopping."""

    def __init__(self) -> None:
        self.shutting_down = False
        self._deadline: float | None = None
        self._producers: set[gevent.Greenlet] = set()
        self._doorbells: set[gevent.event.Event] = set()
        self._deadline_timer: gevent.Greenlet | None = None

    def add_producer(self, producer: gevent.Greenlet) -> None:
        """Track a run's producer until it ends."""
        self._producers.add(producer)
        # rawlink: called by the hub itself (a plain ``link`` would spawn a greenlet per run for it).
        producer.rawlink(self._producers.discard)

    def add_reader(self, doorbell: gevent.event.Event) -> None:
        """Track a reader, so that shutdown can wake it."""
        self._doorbells.add(doorbell)

    def remove_reader(self, doorbell: gevent.event.Event) -> None:
        """Forget a reader that has ended."""
        self._doorbells.discard(doorbell)

    @property
    def live_producers(self) -> int:
        """How many runs this worker is still producing."""
        return len(self._producers)

    def begin_shutdown(self, seconds_left: float) -> None:
        """Stop taking runs, wake every reader, and end what still runs ``seconds_left`` from now."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self._deadline = time.monotonic() + max(seconds_left, 0.0)
        log.info("shutting down: %d live runs get %.1f s to finish", len(self._producers), seconds_left)
        for doorbell in list(self._doorbells):
            doorbell.set()  # a reader of a run produced elsewhere closes, and its client resumes elsewhere
        self._deadline_timer = gevent.spawn_later(max(seconds_left, 0.0), self.end_live_runs)

    def end_live_runs(self) -> None:
        """End every run still produced here with ``fail`` ``shutdown``."""
        producers = list(self._producers)
        if producers:
            log.warning("shutting down: %d runs did not finish in time: 'shutdown'", len(producers))
        for producer in producers:
            producer.kill(ShutdownRun, block=False)
        gevent.joinall(producers, timeout=1.0)

    def finish_shutdown(self) -> None:
        """Wait for this worker's producers up to the deadline, then end the rest (worker exit)."""
        if not self.shutting_down:
            self.begin_shutdown(0.0)
        left = max(0.0, (self._deadline or 0.0) - time.monotonic())
        gevent.joinall(list(self._producers), timeout=left)
        self.end_live_runs()
        if self._deadline_timer is not None:
            self._deadline_timer.kill(block=False)
