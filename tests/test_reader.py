"""The reader (streamchat/reader.py) and its client watch, driven directly against run stores.

The HTTP tests (test_service.py, test_app.py) cover the reader with the real stores; here a store may
do what the real ones rarely do (end silently, vanish, hold a run produced elsewhere), so that the
reader's own guarantees are checked on their own, in milliseconds.

Run: ``python -m pytest tests/test_reader.py -q``
"""

from collections.abc import Iterator

import gevent
import gevent.event
import gevent.socket
import pytest
from helpers import SMALL_STORE, make_store

from streamchat.lifecycle import Lifecycle
from streamchat.protocol import DONE, START
from streamchat.reader import ClientWatch, stream_run
from streamchat.runs import MemoryRunStore, RunStatus, StoreUnavailable
from streamchat.sse import HEARTBEAT, encode_retry


class _RunEndsSilently(MemoryRunStore):
    """A store whose run stops running without a terminal event and without ringing anyone.

    MemoryRunStore always ends a run with ``finish()``, which appends the terminal event and rings
    every reader. Another store (a shared one, say) might not; the reader must still end, not send
    heartbeats forever.
    """

    def __init__(self) -> None:
        super().__init__(**SMALL_STORE)
        self.ended = False

    def status(self, run_id: str) -> RunStatus | None:
        status = super().status(run_id)
        if status is not None and self.ended:
            return RunStatus(status.id, status.model, "done", status.last_event_id, "stop")
        return status


class _ProducedElsewhere(MemoryRunStore):
    """A store whose runs are produced by another process (as a Redis store's may be)."""

    def produced_here(self, run_id: str) -> bool:
        return False


class _Vanishing(MemoryRunStore):
    """A store that becomes unreachable once ``gone`` is set (as Redis may)."""

    gone = False

    def read(self, run_id, after_id):
        if self.gone:
            raise StoreUnavailable("connection refused")
        return super().read(run_id, after_id)

    def detach_reader(self, run_id, doorbell):
        if self.gone:
            raise StoreUnavailable("connection refused")
        super().detach_reader(run_id, doorbell)


def _read_started_run(
    store: MemoryRunStore, after_id: int, lifecycle: Lifecycle | None = None, heartbeat_seconds: float = 0.05
) -> tuple[str, Iterator[bytes]]:
    """Create a run with its start event; return its id and a reader (heartbeat 50 ms unless told) past
    its first write.

    The first write is the retry hint, with the events after ``after_id`` that the log already holds.
    """
    run_id = store.create("demo")
    store.append(run_id, START, {"run": run_id, "model": "demo"})
    body = stream_run(
        store,
        run_id,
        after_id,
        heartbeat_seconds=heartbeat_seconds,
        retry_milliseconds=1000,
        client_socket=None,
        lifecycle=lifecycle or Lifecycle(),
    )
    start = store.read(run_id, 0)[0].frame
    assert next(body) == encode_retry(1000) + (start if after_id == 0 else b"")
    return run_id, body


def test_reader_ends_when_the_run_ends_without_a_terminal_event():
    store = _RunEndsSilently()
    _, body = _read_started_run(store, after_id=1)
    with gevent.Timeout(2, AssertionError("no heartbeat")):
        assert next(body) == HEARTBEAT  # the reader now waits on a live, silent run
    store.ended = True  # nothing is appended and no doorbell rings: only the heartbeat clock wakes it
    with gevent.Timeout(2, AssertionError("the reader did not end")):
        rest = list(body)
    assert rest == []  # it ended at its first wake, with no heartbeat sent for a run that is over


def test_reader_sends_heartbeats_while_the_run_is_silent():
    store = make_store()
    run_id, body = _read_started_run(store, after_id=0)  # the retry hint and `start`, in one write
    with gevent.Timeout(2, AssertionError("no heartbeat")):
        assert [next(body), next(body)] == [HEARTBEAT, HEARTBEAT]
    done = gevent.event.Event()

    def finish_soon() -> None:
        store.finish(run_id, DONE, {"finish_reason": "stop"})
        done.set()

    gevent.spawn_later(0.01, finish_soon)
    with gevent.Timeout(2, AssertionError("the reader did not end")):
        rest = list(body)
    assert done.is_set()
    assert [frame for frame in rest if frame != HEARTBEAT] == [
        b'id: 2\nevent: done\ndata: {"finish_reason":"stop"}\n\n'
    ]


def test_reader_sends_what_piled_up_in_one_write():
    store = make_store()
    run_id, body = _read_started_run(store, after_id=1)
    store.append_token(run_id, "a", 1)
    store.append_token(run_id, "b", 1)
    store.finish(run_id, DONE, {"finish_reason": "stop"})
    assert list(body) == [
        b'id: 2\nevent: token\ndata: {"text":"a","tokens":1}\n\n'
        b'id: 3\nevent: token\ndata: {"text":"b","tokens":1}\n\n'
        b'id: 4\nevent: done\ndata: {"finish_reason":"stop"}\n\n'
    ]


def test_reader_resumes_after_the_given_id_only():
    store = make_store()
    run_id = store.create("demo")
    store.append(run_id, START, {"run": run_id, "model": "demo"})
    for text in "xyz":
        store.append_token(run_id, text, 1)
    store.finish(run_id, DONE, {"finish_reason": "stop"})
    body = stream_run(
        store, run_id, 3, heartbeat_seconds=1, retry_milliseconds=5, client_socket=None, lifecycle=Lifecycle()
    )
    assert b"".join(body) == (
        b"retry: 5\n\n"
        b'id: 4\nevent: token\ndata: {"text":"z","tokens":1}\n\n'
        b'id: 5\nevent: done\ndata: {"finish_reason":"stop"}\n\n'
    )


def test_reader_closing_counts_the_reader_out():
    store = make_store(grace_seconds=0.05)
    stopped = []
    run_id, body = _read_started_run(store, after_id=1)
    store.on_stop(run_id, lambda: stopped.append(run_id))
    gevent.sleep(0.1)
    assert stopped == []  # read: the grace timer is not armed
    body.close()  # the client left: GeneratorExit at the yield
    gevent.sleep(0.1)
    assert stopped == [run_id]  # unread for the grace period: stopped


def test_reader_of_a_run_produced_elsewhere_closes_with_a_retry_hint_on_shutdown():
    store = _ProducedElsewhere(**SMALL_STORE)
    lifecycle = Lifecycle()
    # A heartbeat far off: the shutdown itself must wake the reader, not its next heartbeat.
    run_id, body = _read_started_run(store, after_id=1, lifecycle=lifecycle, heartbeat_seconds=60)
    lifecycle.begin_shutdown(5.0)
    with gevent.Timeout(1, AssertionError("the reader did not close")):
        assert list(body) == [encode_retry(1000)]
    assert store.accepts_events(run_id)  # the run goes on; the client resumes it on another worker


def test_reader_of_a_run_produced_here_reads_on_through_shutdown():
    store = make_store()
    lifecycle = Lifecycle()
    run_id, body = _read_started_run(store, after_id=1, lifecycle=lifecycle)
    lifecycle.begin_shutdown(5.0)
    gevent.spawn_later(0.01, store.finish, run_id, DONE, {"finish_reason": "stop"})
    with gevent.Timeout(1, AssertionError("the reader did not end")):
        rest = [frame for frame in body if frame != HEARTBEAT]
    assert rest == [b'id: 2\nevent: done\ndata: {"finish_reason":"stop"}\n\n']


def test_reader_says_fail_without_an_id_when_the_store_is_lost():
    store = _Vanishing(**SMALL_STORE)
    run_id, body = _read_started_run(store, after_id=1)
    store.gone = True
    store.append_token(run_id, "lost", 1)  # rings the doorbell; the read then fails
    with gevent.Timeout(1, AssertionError("the reader did not end")):
        rest = list(body)
    assert rest == [
        b'event: fail\ndata: {"code":"store_unavailable","message":"The server lost its run store in the '
        b'middle of the answer. Try again.","retryable":true}\n\n'
    ]


@pytest.fixture
def socket_pair():
    """Two connected gevent sockets: the server's end and the client's."""
    server, client = gevent.socket.socketpair()
    yield server, client
    server.close()
    client.close()


def test_client_watch_sees_the_client_close(socket_pair):
    server, client = socket_pair
    doorbell = gevent.event.Event()
    watch = ClientWatch(server, doorbell)
    assert not watch.gone
    client.close()
    with gevent.Timeout(1, AssertionError("the doorbell did not ring")):
        doorbell.wait()
    gevent.sleep(0)
    assert watch.gone
    watch.close()


def test_client_watch_leaves_a_pipelined_request_unread(socket_pair):
    server, client = socket_pair
    doorbell = gevent.event.Event()
    watch = ClientWatch(server, doorbell)
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    gevent.sleep(0.05)
    assert not watch.gone and not doorbell.is_set()
    watch.close()
    assert server.recv(100) == b"GET / HTTP/1.1\r\n\r\n"  # still there for the server to read


def test_client_watch_ignores_a_socket_it_cannot_watch():
    doorbell = gevent.event.Event()
    watch = ClientWatch(None, doorbell)  # the Flask test client has no gevent socket
    assert not watch.gone
    watch.close()
