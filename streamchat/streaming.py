"""One HTTP response's side of a run: read the run's log and yield SSE bytes, with heartbeats.

A request's journey ends here: the view has already validated everything and started (or found)
the run, and returns ``Response(stream_run(...))``. This generator is only a *reader*: it never
talks to the model, so when it ends (terminal event, closed tab, server shutdown) the run goes on
for other readers, and is stopped by the run store only if nobody reads it for the grace period.

Why the socket watch: after a browser tab closes, the next write to its socket usually still
succeeds (the kernel buffers it), so a reader that waits for a failed write notices the departure
only after a heartbeat or two. gunicorn's gevent worker hands us the client socket as
``environ["gunicorn.socket"]``; a greenlet blocked in ``recv(MSG_PEEK)`` sees its EOF at once.
The price: a client that half-closes its side after sending the request (``shutdown(SHUT_WR)``,
as ``nc -N`` does) looks the same as one that left, and is treated as gone. Browsers, curl and
nginx never do that while they still read.

Try it (a finished run answers 204; see the README for the whole protocol)::

    curl -N localhost:8000/runs/RUN_ID/stream -H 'Last-Event-ID: 3'
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import gevent
import gevent.event
import gevent.socket

from streamchat.runs import TERMINAL_EVENTS, EventsDropped, RunNotFound, RunStore
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
) -> Iterator[bytes]:
    """Yield the run's events after ``after_id`` as SSE, live, until its terminal event."""
    try:
        store.attach_reader(run_id)
    except RunNotFound:
        return  # expired between the view's check and now: an empty body
    watch = ClientWatch(client_socket)
    try:
        # The first bytes go out at once, so the headers are flushed before the first token.
        yield encode_retry(retry_milliseconds)
        while not watch.gone.is_set():
            events = store.read(run_id, after_id, heartbeat_seconds, interrupt=watch.gone)
            if not events:
                status = store.status(run_id)
                if status is None or status.state != "running":
                    return  # ended without a terminal event we can send (expired): never spin
                if not watch.gone.is_set():
                    yield HEARTBEAT
                continue
            # Everything waiting goes out in one write: a slow reader catches up in few syscalls.
            yield b"".join(event.frame for event in events)
            after_id = events[-1].id
            if events[-1].name in TERMINAL_EVENTS:
                return
    except (RunNotFound, EventsDropped):
        # Expired, or fell behind the bounded log: end the response; a resume answers 204 or 409.
        return
    finally:
        watch.close()
        store.detach_reader(run_id)


class ClientWatch:
    """Sets ``gone`` as soon as the client closes its end of the connection."""

    def __init__(self, client_socket: socket.socket | None) -> None:
        self.gone = gevent.event.Event()
        # Only a gevent socket can be watched without blocking the worker (not so under a test client).
        watchable = isinstance(client_socket, gevent.socket.socket)
        self._greenlet = gevent.spawn(self._watch, client_socket) if watchable else None

    def _watch(self, client_socket: socket.socket) -> None:
        try:
            peeked = client_socket.recv(1, socket.MSG_PEEK)
        except ValueError:
            return  # TLS sockets refuse MSG_PEEK: fall back to noticing a failed write
        except OSError:
            self.gone.set()
            return
        # b"" is EOF. Anything else (a pipelined request) is left unread; we stop watching.
        if not peeked:
            self.gone.set()

    def close(self) -> None:
        """Stop watching (before gunicorn reads the next request on a kept-alive connection)."""
        if self._greenlet is not None:
            self._greenlet.kill()
