"""Close a response whose client stays connected but stops reading (SEND_TIMEOUT_SECONDS).

Why: a client that never reads fills the socket's buffers, and the next write blocks for as long as the
connection lives. Its reader is still attached, so the run's grace period never starts and the model
goes on generating (and billing) to the end of the answer, for nobody. gunicorn's gevent worker has no
write timeout, and nginx's ``send_timeout`` only helps where nginx is in front.

How: ``watch_sends`` wraps the reader's frames (streamchat/reader.py). While gunicorn is writing a
frame, a clock runs (an IdleTimer, so one loop timer per period, not one per frame); if the write has
not finished SEND_TIMEOUT_SECONDS later, the socket is shut down. The blocked write then fails at once
(gunicorn takes the broken pipe quietly), gunicorn closes the response, the reader detaches, and the
run's grace period stops the run if nobody else reads it.

A reader waiting for its next event is not writing: the clock only counts while a frame is in
gunicorn's hands, and a heartbeat comes well before SEND_TIMEOUT_SECONDS (config.py checks that it is
longer than HEARTBEAT_SECONDS).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterable, Iterator

import gevent.socket

from streamchat.idle_timer import IdleTimer

log = logging.getLogger(__name__)


def watch_sends(frames: Iterator[bytes], client_socket: object, seconds: float) -> Iterable[bytes]:
    """Return ``frames`` watched for stuck writes, or as they are when there is no socket to watch."""
    if not isinstance(client_socket, gevent.socket.socket):
        return frames  # the Flask test client: nothing is written to a socket
    return _SendWatch(frames, client_socket, seconds)


class _SendWatch:
    """An iterator over a response's frames that shuts the socket if one write stalls too long."""

    __slots__ = ("_clock", "_frames", "_socket", "_writing")

    def __init__(self, frames: Iterator[bytes], client_socket: socket.socket, seconds: float) -> None:
        self._frames = frames
        self._socket = client_socket
        self._writing = False
        self._clock = IdleTimer(seconds, self._stalled)

    def __iter__(self) -> _SendWatch:
        return self

    def __next__(self) -> bytes:
        # Asked for the next frame: the last write has finished.
        self._writing = False
        frame = next(self._frames)
        # gunicorn writes the frame now; the clock counts from here.
        self._clock.touch()
        self._writing = True
        return frame

    def close(self) -> None:
        """Stop the clock and close the reader (gunicorn calls this however the response ends)."""
        self._clock.cancel()
        self._frames.close()

    def _stalled(self) -> None:
        """Runs in gevent's hub: a write has made no progress for the whole period."""
        if not self._writing:
            return
        self._clock.cancel()
        log.info("a client stopped reading for %g s: its response is closed", self._clock.seconds)
        # Shut down through a duplicate of the descriptor: gevent's own shutdown() would cancel the
        # blocked write with EBADF, which gunicorn logs as an error with a traceback, while a shutdown
        # at the OS level makes the write fail with a broken pipe, which gunicorn takes quietly.
        with contextlib.suppress(OSError):  # already gone
            fd = self._socket.fileno()
            with socket.fromfd(fd, self._socket.family, self._socket.type) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
