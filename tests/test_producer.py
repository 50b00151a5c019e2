"""Tests for how a run ends (streamchat/producer.py), driven directly: no Flask, no gunicorn.

Where it sits: ``start_run`` creates the run and spawns its producer greenlet; however the run ends
(its answer, a stop, a shutdown, a bug, or a kill that lands before the greenlet ever ran), it gets
exactly one terminal event, ``on_end`` is called once with the tokens spent, and the worker stops
counting the producer as live. The provider here is a plain generator, so each test decides what
the "model" does.

Run: ``python -m pytest tests/test_producer.py -q``
"""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
from helpers import make_store

from streamchat.chat_request import ChatRequest
from streamchat.lifecycle import Lifecycle
from streamchat.producer import Clocks, start_run
from streamchat.protocol import DONE, FAIL
from streamchat.providers.base import Delta, Finish

REQUEST = ChatRequest(
    messages=({"role": "user", "content": "hi"},), model="demo", max_tokens=16, temperature=None
)
CLOCKS = Clocks(first_token_seconds=5, stall_seconds=5, run_seconds=60)


class _Provider:
    """Answers with ``texts``, then a Finish; or raises ``error`` after them; notes if it was asked."""

    def __init__(self, texts: tuple[str, ...] = ("a", "b"), error: Exception | None = None) -> None:
        self.texts, self.error, self.asked = texts, error, False

    def stream(self, request: ChatRequest, system_prompt: str) -> Iterator[Delta | Finish]:
        self.asked = True
        for text in self.texts:
            yield Delta(text, 1)
        if self.error is not None:
            raise self.error
        yield Finish("stop", None)


def _start(provider, clocks: Clocks = CLOCKS) -> tuple[object, str, Lifecycle, list[int]]:
    """Start a run; return its store, its id, the lifecycle and the list ``on_end`` appends to."""
    store, lifecycle, ended = make_store(), Lifecycle(), []
    run_id = start_run(
        store, provider, REQUEST, system_prompt="s", clocks=clocks, lifecycle=lifecycle, on_end=ended.append
    )
    return store, run_id, lifecycle, ended


def _wait_until_ended(lifecycle: Lifecycle) -> None:
    """Let the hub run until no producer is live (bounded)."""
    with gevent.Timeout(2, AssertionError("the producer did not end")):
        while lifecycle.live_producers:
            gevent.sleep(0.005)
    gevent.sleep(0.01)  # a run that never ran is ended by a greenlet its link spawns


def _events(store, run_id: str) -> list[str]:
    return [event.name for event in store.read(run_id, 0)]


def test_producer_a_whole_answer_ends_done_and_reports_its_tokens():
    store, run_id, lifecycle, ended = _start(_Provider())
    _wait_until_ended(lifecycle)
    assert _events(store, run_id) == ["start", "token", "token", DONE]
    assert store.status(run_id).finish_reason == "stop"
    assert ended == [2]


def test_producer_stopped_before_it_ever_ran_ends_stopped_once():
    provider = _Provider()
    store, run_id, lifecycle, ended = _start(provider)
    store.request_stop(run_id)  # before the hub has run the producer greenlet at all
    _wait_until_ended(lifecycle)
    assert not provider.asked  # the model was never asked
    assert _events(store, run_id) == ["start", DONE]
    assert store.status(run_id).finish_reason == "stopped"
    assert ended == [0]


def test_producer_shut_down_before_it_ever_ran_ends_with_shutdown():
    store, run_id, lifecycle, ended = _start(_Provider())
    lifecycle.end_live_runs()  # a stopping worker, before the producer first ran
    _wait_until_ended(lifecycle)
    assert _events(store, run_id) == ["start", FAIL]
    assert store.status(run_id).code == "shutdown"
    assert ended == [0]


def test_producer_bug_in_the_provider_ends_internal_with_the_text_kept():
    store, run_id, lifecycle, ended = _start(_Provider(texts=("a",), error=RuntimeError("a bug")))
    _wait_until_ended(lifecycle)
    assert _events(store, run_id) == ["start", "token", FAIL]
    assert store.status(run_id).code == "internal"
    assert ended == [1]


class _SilentProvider:
    """Sends ``tokens`` tokens, then nothing for a minute (a model that went quiet)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def stream(self, request: ChatRequest, system_prompt: str) -> Iterator[Delta | Finish]:
        for _ in range(self.tokens):
            yield Delta("a", 1)
        gevent.sleep(60)
        yield Finish("stop", None)


@pytest.mark.parametrize(
    ("tokens", "clocks", "code"),
    [
        # Silent before the first token: the first-token clock, however long the stall clock.
        (0, Clocks(first_token_seconds=0.05, stall_seconds=60), "first_token_timeout"),
        # Silent after one: the stall clock takes over from the first-token clock at the first token.
        (1, Clocks(first_token_seconds=60, stall_seconds=0.05), "stalled"),
    ],
)
def test_producer_each_clock_ends_a_silent_run_with_its_own_code(tokens, clocks, code):
    store, run_id, lifecycle, ended = _start(_SilentProvider(tokens), clocks)
    with gevent.Timeout(1, AssertionError(f"no {code} within a second")):
        while lifecycle.live_producers:
            gevent.sleep(0.005)
    assert _events(store, run_id) == ["start", *["token"] * tokens, FAIL]
    assert store.status(run_id).code == code
    assert ended == [tokens]
