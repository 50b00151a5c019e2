"""The in-memory run store: the log, reads, doorbells, the bounds, stop and the unread grace period."""

import gevent
import gevent.event
import pytest
from helpers import make_store

from streamchat.runs import EventsDropped, RunNotFound, TooManyRuns


def test_run_store_numbers_events_from_one_and_stores_frames():
    store = make_store()
    run_id = store.create("demo")
    assert store.append(run_id, "start", {"run": run_id}) == 1
    assert store.append(run_id, "token", {"text": "a", "tokens": 1}) == 2
    assert store.append_token(run_id, "b", 3) == 3
    events = store.read(run_id, 0)
    assert [(e.id, e.name) for e in events] == [(1, "start"), (2, "token"), (3, "token")]
    assert events[1].frame == b'id: 2\nevent: token\ndata: {"text":"a","tokens":1}\n\n'
    assert events[2].frame == b'id: 3\nevent: token\ndata: {"text":"b","tokens":3}\n\n'
    assert store.read(run_id, 1) == events[1:]
    assert store.read(run_id, 3) == []


def test_run_store_rings_every_attached_doorbell_at_each_event():
    store = make_store()
    run_id = store.create("demo")
    first, second = gevent.event.Event(), gevent.event.Event()
    store.attach_reader(run_id, first)
    store.attach_reader(run_id, second)
    store.append_token(run_id, "a", 1)
    assert first.is_set() and second.is_set()
    first.clear()
    second.clear()
    store.detach_reader(run_id, second)
    store.finish(run_id, "done", {"finish_reason": "stop"})
    assert first.is_set() and not second.is_set()


@pytest.mark.parametrize(
    ("name", "data", "state", "reason", "code"),
    [
        ("done", {"finish_reason": "stop"}, "done", "stop", None),
        ("done", {"finish_reason": "length"}, "done", "length", None),
        ("done", {"finish_reason": "stopped"}, "stopped", "stopped", None),
        ("fail", {"code": "stalled", "message": "m", "retryable": True}, "failed", None, "stalled"),
    ],
)
def test_run_store_finish_records_the_outcome(name, data, state, reason, code):
    store = make_store()
    run_id = store.create("demo")
    store.finish(run_id, name, data)
    status = store.status(run_id)
    assert (status.state, status.finish_reason, status.code, status.last_event_id) == (state, reason, code, 1)
    with pytest.raises(ValueError):
        store.append(run_id, "token", {"text": "after the end"})


def test_run_store_refuses_terminal_events_through_append():
    store = make_store()
    with pytest.raises(ValueError):
        store.append(store.create("demo"), "done", {"finish_reason": "stop"})


def test_run_store_bounded_log_raises_events_dropped():
    store = make_store(event_log_size=3)
    run_id = store.create("demo")
    for i in range(10):
        store.append(run_id, "token", {"text": str(i)})
    assert [e.id for e in store.read(run_id, 7)] == [8, 9, 10]
    with pytest.raises(EventsDropped):
        store.read(run_id, 6)
    # The check a resume makes before its response starts reads the first event only.
    assert [e.id for e in store.read(run_id, 7, limit=1)] == [8]
    assert [e.id for e in store.read(run_id, 8, limit=5)] == [9, 10]
    with pytest.raises(EventsDropped):
        store.read(run_id, 6, limit=1)


def test_run_store_forgets_finished_runs_after_ttl():
    store = make_store(ttl_seconds=0.05)
    run_id = store.create("demo")
    store.finish(run_id, "done", {"finish_reason": "stop"})
    assert store.status(run_id) is not None
    gevent.sleep(0.1)
    assert store.status(run_id) is None
    with pytest.raises(RunNotFound):
        store.read(run_id, 0)
    store.create("demo")  # creating sweeps expired runs out of memory
    assert run_id not in store._runs


def test_run_store_limits_live_runs():
    store = make_store(max_active_runs=2)
    first = store.create("demo")
    store.create("demo")
    with pytest.raises(TooManyRuns):
        store.create("demo")
    store.finish(first, "done", {"finish_reason": "stop"})
    store.create("demo")  # a finished run no longer counts


def test_run_store_stop_calls_callbacks_once_while_live():
    store = make_store()
    run_id = store.create("demo")
    calls = []
    store.on_stop(run_id, lambda: calls.append("stop"))
    assert store.request_stop(run_id).state == "running"
    assert store.request_stop(run_id).state == "running"
    assert calls == ["stop"]
    assert store.request_stop("unknown") is None
    # A finished run calls nobody back: a stop that comes after its end is only answered.
    finished = store.create("demo")
    store.on_stop(finished, lambda: calls.append("too late"))
    store.finish(finished, "done", {"finish_reason": "stop"})
    assert store.request_stop(finished).state == "done"
    assert calls == ["stop"]


def test_run_store_stops_a_run_nobody_reads_after_the_grace_period():
    store = make_store(grace_seconds=0.05)
    run_id = store.create("demo")
    stopped = []
    store.on_stop(run_id, lambda: stopped.append(run_id))
    gevent.sleep(0.1)
    assert stopped == [run_id]


def test_run_store_reader_within_grace_keeps_the_run_going():
    # A grace period ten times the reader's absence: a loaded machine's late wake-up cannot use it up.
    store = make_store(grace_seconds=0.5)
    run_id = store.create("demo")
    stopped = []
    store.on_stop(run_id, lambda: stopped.append(run_id))
    reader, returning = gevent.event.Event(), gevent.event.Event()
    store.attach_reader(run_id, reader)
    gevent.sleep(0.6)  # read for longer than the grace period: nothing to stop
    store.detach_reader(run_id, reader)  # the reader leaves: the clock starts again
    gevent.sleep(0.05)
    store.attach_reader(run_id, returning)  # and a new one comes back in time
    gevent.sleep(0.6)  # past the first reader's grace period: the new reader keeps the run
    assert stopped == []
    store.detach_reader(run_id, returning)
    with gevent.Timeout(2, AssertionError("not stopped after the grace period")):
        while not stopped:
            gevent.sleep(0.01)
    assert stopped == [run_id]


def test_run_store_unencodable_terminal_event_leaves_the_run_live():
    store = make_store()
    run_id = store.create("demo")
    with pytest.raises(ValueError):
        store.finish(run_id, "done", {"finish_reason": "stop", "usage": {"total_tokens": float("inf")}})
    status = store.status(run_id)
    assert (status.state, status.last_event_id) == ("running", 0)
    store.finish(run_id, "fail", {"code": "internal", "message": "m", "retryable": False})
    assert [e.id for e in store.read(run_id, 0)] == [1]
