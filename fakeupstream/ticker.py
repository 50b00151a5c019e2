"""The token ticker: one greenlet that writes every stream's due tokens, round after round.

Where it sits: the server (fakeupstream/server.py) hands each response's tokens to ``send_tokens``,
which queues them here and waits; the ticker writes each token when it is due, on its schedule.

Why one greenlet for all streams: the benchmark (bench/run.py) drives thousands of streams through
this server on one core beside its load generator, and the harness must cost far less than the relay
it measures. One timer per token per stream, and a greenlet switch for each, was most of this
server's CPU at that scale; one wake per round for all streams is a fraction of it. A round sleeps at
least ``TICK`` seconds, so writes come in batches, and a token may go out up to ``TICK`` late.

Try it: tests/test_fake_upstream.py (``test_wire_paces_first_token_and_the_rest``) checks the pace
over a real socket.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import time
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

if TYPE_CHECKING:
    from fakeupstream.frames import Frames
    from fakeupstream.server import Connection

TICK = 0.002  # the ticker sleeps at least this long between rounds, so writes come in batches
ROUND_LIMIT = 2000  # writes per round at most when behind schedule, then the other greenlets run


def send_tokens(
    conn: Connection,
    frames: Frames,
    pieces: list[str],
    indexes: range,
    first_due: float,
    interval: float,
    record: dict,
) -> bool:
    """Send the given tokens on schedule; return False if the client went away."""
    # Each token is due at a fixed time from the first, so pauses do not add up into drift. The
    # ticker writes them; this greenlet only waits, and takes over a write that would block.
    job = TokenJob(conn, frames, pieces, indexes, first_due, interval, record)
    try:
        while job.pos < len(indexes):
            job.handed_back.clear()
            ticker().add(job)
            gevent.wait([job.handed_back, conn.gone], count=1)
            if not job.handed_back.is_set():
                return False  # the client left while its next token was waiting
            if job.error is not None:
                raise job.error
            if job.pending:
                conn.sock.sendall(job.pending)  # a slow reader: only this greenlet waits for it
                record["tokens_sent"] = job.pending_index + 1
                job.pending = b""
            if conn.gone.is_set():
                return False
        return True
    finally:
        job.cancelled = True  # the ticker must never write to this socket again


class TokenJob:
    """One response's tokens, waiting in the ticker for their due times."""

    __slots__ = (
        "cancelled",
        "conn",
        "due",
        "error",
        "fd",
        "first_due",
        "frames",
        "handed_back",
        "indexes",
        "interval",
        "pending",
        "pending_index",
        "pieces",
        "pos",
        "record",
    )

    def __init__(
        self,
        conn: Connection,
        frames: Frames,
        pieces: list[str],
        indexes: range,
        first_due: float,
        interval: float,
        record: dict,
    ) -> None:
        self.conn, self.fd, self.frames, self.pieces = conn, conn.sock.fileno(), frames, pieces
        self.indexes, self.first_due, self.interval, self.record = indexes, first_due, interval, record
        self.pos = 0
        self.due = first_due + indexes[0] * interval if indexes else first_due
        self.handed_back = Event()  # set when the ticker is done with the job, for now or for good
        self.pending = b""  # the rest of a token that the socket would not take at once
        self.pending_index = 0
        self.error: OSError | None = None
        self.cancelled = False

    def send_due(self) -> bool:
        """Write the token that is due; return True if the job goes back into the ticker's queue."""
        if self.cancelled:
            return False
        if self.conn.gone.is_set():
            self.handed_back.set()
            return False
        index = self.indexes[self.pos]
        frame = self.frames.token(self.pieces[index])
        self.pos += 1
        try:
            # The socket is non-blocking under gevent: a write that would block returns short (or
            # raises BlockingIOError) instead of stalling every other stream behind this one.
            sent = os.write(self.fd, frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the client has gone
            self.error = exc
            self.handed_back.set()
            return False
        if sent < len(frame):
            self.pending, self.pending_index = frame[sent:], index
            self.handed_back.set()
            return False
        self.record["tokens_sent"] = index + 1
        if self.pos == len(self.indexes):
            self.handed_back.set()
            return False
        self.due = self.first_due + self.indexes[self.pos] * self.interval
        return True


class Ticker:
    """One greenlet that writes every stream's due tokens, then sleeps until the next is due.

    One timer wake per round for all streams, instead of a timer and a greenlet switch per token per
    stream: at thousands of streams that was most of this server's CPU.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, TokenJob]] = []  # a heap by due time
        self._order = itertools.count()  # breaks ties, so that jobs are never compared
        self._greenlet: gevent.Greenlet | None = None
        self._changed = Event()
        self._next_round = math.inf

    def add(self, job: TokenJob) -> None:
        """Queue a job; wake the ticker if the job is due before its next round."""
        heapq.heappush(self._queue, (job.due, next(self._order), job))
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        elif job.due < self._next_round:
            self._changed.set()

    def _run(self) -> None:
        """Send what is due, round after round, until no job is left."""
        queue = self._queue
        while queue:
            now = time.monotonic()
            sent = 0
            # Behind schedule, a round stops after a bounded number of writes so that the watchers
            # and new connections still get their turn.
            while queue and queue[0][0] <= now and sent < ROUND_LIMIT:
                job = heapq.heappop(queue)[2]
                if job.send_due():
                    heapq.heappush(queue, (job.due, next(self._order), job))
                sent += 1
            if not queue:
                break
            self._next_round = now if sent == ROUND_LIMIT else max(queue[0][0], now + TICK)
            self._changed.clear()
            self._changed.wait(max(0.0, self._next_round - time.monotonic()))
        self._next_round = math.inf


_TICKER: Ticker | None = None


def ticker() -> Ticker:
    """Return the ticker, created on first use (importing this module starts nothing)."""
    global _TICKER
    if _TICKER is None:
        _TICKER = Ticker()
    return _TICKER
