"""The reader (streamchat/streaming.py) driven directly, against run stores with a given behaviour.

The HTTP tests (test_service.py, test_app.py) cover the reader with the real store; here a store may
do what the real one never does, so that the reader's own guarantees are checked on their own.

Run: ``python -m pytest tests/test_streaming.py -q``
"""

from collections.abc import Iterator

import gevent
import gevent.event
from conftest import SMALL_STORE, make_store

from streamchat.runs import MemoryRunStore, RunStatus
from streamchat.sse import HEARTBEAT, encode_retry
from streamchat.streaming import stream_run


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


def _read_started_run(store: MemoryRunStore, after_id: int) -> tuple[str, Iterator[bytes]]:
    """Create a run with its start event; return its id and a reader (heartbeat 50 ms) past its retry hint."""
    run_id = store.create("demo")
    store.append(run_id, "start", {"run": run_id, "model": "demo"})
    body = stream_run(
        store, run_id, after_id, heartbeat_seconds=0.05, retry_milliseconds=1000, client_socket=None
    )
    assert next(body) == encode_retry(1000)
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
    run_id, body = _read_started_run(store, after_id=0)
    assert next(body).startswith(b"id: 1\nevent: start\n")
    with gevent.Timeout(2, AssertionError("no heartbeat")):
        assert [next(body), next(body)] == [HEARTBEAT, HEARTBEAT]
    done = gevent.event.Event()

    def finish_soon() -> None:
        store.finish(run_id, "done", {"finish_reason": "stop"})
        done.set()

    gevent.spawn_later(0.01, finish_soon)
    with gevent.Timeout(2, AssertionError("the reader did not end")):
        rest = list(body)
    assert done.is_set()
    assert [frame for frame in rest if frame != HEARTBEAT] == [
        b'id: 2\nevent: done\ndata: {"finish_reason":"stop"}\n\n'
    ]
