"""One HTTP response's side of a run: read the run's log and yield SSE bytes, with heartbeats.

A request's journey ends here: the view has already validated everything and started (or found)
the run, and returns ``Response(stream_run(...))``. This generator is only a *reader*: it never
talks to the model, so when it ends (terminal event, closed tab, server shutdown) the run goes on
for other readers, and is stopped by the run store only if nobody reads it for the grace period.

Why the socket watch: after a browser tab closes, the next write to its socket usually still
succeeds (the kernel buffers it), so a reader that waits for a failed write notices the departure
only after a heartbeat or two. gunicorn's gevent worker hands us the client socket as
``environ["gunicorn.socket"]``; an io watcher on it, then ``recv(MSG_PEEK)``, sees its EOF at once.
The price: a client that half-closes its side after sending the request (``shutdown(SHUT_WR)``,
as ``nc -N`` does) looks the same as one that left, and is treated as gone. Browsers, curl and
nginx never do that while they still read.

Try it (a finished run answers 204; see docs/protocol.md for the whole protocol)::

    curl -N localhost:8000/runs/RUN_ID/stream -H 'Last-Event-ID: 3'
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import gevent
import gevent.event
import gevent.socket

from streamchat import metrics
from streamchat.idle_timer import IdleTimer
from streamchat.lifecycle import Lifecycle
from streamchat.protocol import RUNNING, TERMINAL_EVENTS, FailCode
from streamchat.runs import EventsDropped, RunNotFound, RunStore, StoreUnavailable, unlogged_fail
from streamchat.sse import HEARTBEAT, encode_retry

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    # no-store: a cached or replayed token stream is never right. X-Accel-Buffering: tell nginx not
    # to buffer this response. No Connection header: it is hop-by-hop, gunicorn's (PEP 3333).
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}


def stream_run(
    store: RunStore,
    run_id: str,
    after_id: int,
    *,
    heartbeat_seconds: float,
    retry_milliseconds: int,
    client_socket: socket.socket | None,
    lifecycle: Lifecycle,
) -> Iterator[bytes]:
    """Yield the run's events after ``after_id`` as SSE, live, until its terminal event."""
    # One doorbell wakes this reader for everything it waits for: a new event in the run, the
    # client leaving, a heartbeat falling due. Waiting on one event, with no timeout, is the
    # cheapest wait gevent has, and this loop waits once per token.
    doorbell = gevent.event.Event()
    try:
        store.attach_reader(run_id, doorbell)
    except RunNotFound:
        return  # expired between the view's check and now: an empty body
    except StoreUnavailable:
        yield unlogged_fail(FailCode.STORE_UNAVAILABLE)
        return
    lifecycle.add_reader(doorbell)
    metrics.reader_attached(run_id)
    watch = heartbeat = None
    try:
        watch = ClientWatch(client_socket, doorbell)
        heartbeat = IdleTimer(heartbeat_seconds, doorbell.set)
        # The first write is the retry hint with whatever the log already holds (a new run's `start`):
        # one write, not two. It goes out on the first turn even with nothing to read, so that the
        # headers are on their way before the first token.
        first = encode_retry(retry_milliseconds)
        doorbell.set()  # the first turn reads what the log already holds
        last_turn = False
        while True:
            doorbell.wait()  # returns at once if anything rang since the last turn
            doorbell.clear()  # before reading, so that a ring during the read or the write is kept
            if watch.gone:
                metrics.client_disconnected()
                return
            if lifecycle.shutting_down and not store.produced_here(run_id):
                # This worker is stopping, and the run goes on elsewhere: the client reconnects
                # (EventSource by itself, the page's fetch reader too) and resumes on another worker.
                yield encode_retry(retry_milliseconds)
                return
            events = store.read(run_id, after_id)
            if events:
                # Everything waiting goes out in one write: a slow reader catches up in few syscalls.
                yield b"".join([first, *[event.frame for event in events]])
                first = b""
                heartbeat.touch()
                after_id = events[-1].id
                if events[-1].name in TERMINAL_EVENTS:
                    return
            else:
                if first:
                    yield first
                    first = b""
                # Rung with nothing new: the heartbeat clock, or a ring whose event the last read
                # already took. Asked here, not once per token (a status is an object to build):
                # has the run ended without a terminal event left to send (expired)?
                status = store.status(run_id)
                if status is None:
                    return
                if status.state != RUNNING:
                    if status.last_event_id > after_id and not last_turn:
                        # Ended, and its terminal event is in the log but not yet read here (another
                        # process wrote it): one more turn reads it.
                        last_turn = True
                        doorbell.set()
                        continue
                    return
                if heartbeat.idle_for() >= heartbeat_seconds:
                    metrics.heartbeat_sent()
                    yield HEARTBEAT
                    heartbeat.touch()
    except (RunNotFound, EventsDropped):
        # Expired, or fell behind the bounded log: end the response; a resume answers 204 or 409.
        return
    except StoreUnavailable:
        # The run store went away mid-stream: say so with a `fail` that has no id (unlogged_fail).
        yield unlogged_fail(FailCode.STORE_UNAVAILABLE)
        return
    except GeneratorExit:
        # The server closed this response before its end: a write to the client failed (it left
        # before the watch saw it) or the client's reader went away. Counted, then let through.
        metrics.client_disconnected()
        raise
    finally:
        metrics.reader_detached()
        if heartbeat is not None:
            heartbeat.cancel()
        if watch is not None:
            watch.close()
        lifecycle.remove_reader(doorbell)
        # Nothing to count out in a store that is gone (its grace check cannot see us either).
        with contextlib.suppress(StoreUnavailable):
            store.detach_reader(run_id, doorbell)


class ClientWatch:
    """Sets ``gone`` and rings the doorbell as soon as the client closes its end of the connection.

    An io watcher does the waiting, not a greenlet, so an idle stream keeps no stack for it. Only
    when the socket turns readable (EOF, a reset, or an early next request) does a short greenlet
    peek at it to tell which.
    """

    def __init__(self, client_socket: socket.socket | None, doorbell: gevent.event.Event) -> None:
        self.gone = False
        self._doorbell = doorbell
        # Only a gevent socket can be watched without blocking the worker (not so under a test client).
        self._socket = client_socket if isinstance(client_socket, gevent.socket.socket) else None
        self._watcher = None
        self._peeker: gevent.Greenlet | None = None
        if self._socket is not None:
            self._watcher = gevent.get_hub().loop.io(self._socket.fileno(), 1)
            self._watcher.start(self._readable)

    def _readable(self) -> None:
        self._watcher.stop()
        self._peeker = gevent.spawn(self._peek)

    def _peek(self) -> None:
        try:
            peeked = self._socket.recv(1, socket.MSG_PEEK)
        except ValueError:
            return  # TLS sockets refuse MSG_PEEK: fall back to noticing a failed write
        except OSError:
            peeked = b""  # reset: gone, just like a clean close
        # b"" is EOF. Anything else (a pipelined request) is left unread; we stop watching.
        if not peeked:
            self.gone = True
            self._doorbell.set()

    def close(self) -> None:
        """Stop watching (before gunicorn reads the next request on a kept-alive connection)."""
        if self._watcher is not None:
            self._watcher.close()
        if self._peeker is not None:
            self._peeker.kill()
