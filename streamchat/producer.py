"""The producer: one greenlet per run that reads the model and appends events to the run's log.

Why a separate greenlet, and not a Flask generator that iterates the model directly: a generator
that blocks on the upstream cannot send heartbeats while the model is silent, cannot notice that
its reader left before the first token, and cannot be resumed by a second request. Here the HTTP
responses only read the log (streamchat/streaming.py), so all of that falls out naturally.

The producer also owns the clocks: silence from the upstream for FIRST_TOKEN_TIMEOUT_SECONDS before
the first token, or for STALL_TIMEOUT_SECONDS after it, ends the run with a ``fail`` event (one
IdleTimer per run, streamchat/idle_timer.py). Any data counts as a sign of life, answer text or
not: a reasoning model may stream its thinking for minutes before it answers. A stop request (stop
endpoint, or no reader for the grace period) kills the greenlet with ``StopRun`` wherever it is
blocked; the provider's ``finally`` block then closes the upstream connection, so the model stops
generating (and billing) at once.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass

import gevent

from streamchat.chat_request import ChatRequest
from streamchat.idle_timer import IdleTimer
from streamchat.providers.base import Delta, Finish, Provider, ProviderFailure
from streamchat.runs import RunStore

log = logging.getLogger(__name__)


class UpstreamSilent(BaseException):
    """Thrown into a producer greenlet whose upstream stayed silent for too long.

    A BaseException, like gevent.Timeout: the SDK's retry loop (which catches Exception) cannot
    swallow it.
    """


class StopRun(gevent.GreenletExit):
    """Thrown into a producer greenlet to stop it.

    A GreenletExit (so a BaseException): no ``except Exception`` in the SDK can swallow it, and gevent
    does not report it as a crash.
    """


@dataclass(frozen=True)
class Clocks:
    """How long the upstream may stay silent: before the first token, and between tokens."""

    first_token_seconds: float
    stall_seconds: float


def start_run(
    store: RunStore, provider: Provider, request: ChatRequest, *, system_prompt: str, clocks: Clocks
) -> str:
    """Create a run, log its ``start`` event, and spawn the greenlet that fills the rest."""
    run_id = store.create(request.model)
    store.append(run_id, "start", {"run": run_id, "model": request.model})
    answer = provider.stream(request, system_prompt)  # a generator: nothing runs until the greenlet
    producer = gevent.spawn(_produce, store, run_id, answer, clocks)
    # Whatever happens, the run gets its terminal event when the greenlet ends. A kill that lands
    # before the greenlet first runs keeps it from running at all, so its own `except StopRun`
    # never sees it; and a bug while finishing would otherwise leave the run live forever.
    producer.link(lambda ended: _finish_if_live(store, run_id, ended))
    store.on_stop(run_id, lambda: producer.kill(StopRun, block=False))
    return run_id


def _finish_if_live(store: RunStore, run_id: str, producer: gevent.Greenlet) -> None:
    """End a run whose producer has ended without ending it: stopped if killed, else internal."""
    status = store.status(run_id)
    if status is None or status.state != "running":
        return
    if producer.successful():  # killed (StopRun is a GreenletExit) before it could run
        store.finish(run_id, "done", {"finish_reason": "stopped"})
    else:
        log.error("run %s: producer crashed: %r", run_id, producer.exception)
        store.finish(run_id, "fail", ProviderFailure("internal").event_data())


def _produce(
    store: RunStore, run_id: str, answer: Generator[Delta | Finish, None, None], clocks: Clocks
) -> None:
    """Relay the provider's answer into the log and end it with exactly one terminal event."""
    try:
        finish = _relay(store, run_id, answer, clocks)
    except StopRun:
        log.info("run %s: stopped", run_id)
        store.finish(run_id, "done", {"finish_reason": "stopped"})
    except ProviderFailure as failure:
        log.warning("run %s: failed with %s: %s", run_id, failure.code, failure.detail or failure.message)
        store.finish(run_id, "fail", failure.event_data())
    except Exception:
        # A bug of ours (or a provider's): log it with its traceback, show the user a safe message.
        log.exception("run %s: internal error", run_id)
        store.finish(run_id, "fail", ProviderFailure("internal").event_data())
    else:
        done: dict = {"finish_reason": finish.reason}
        if finish.usage is not None:
            done["usage"] = finish.usage
        store.finish(run_id, "done", done)


def _relay(
    store: RunStore, run_id: str, answer: Generator[Delta | Finish, None, None], clocks: Clocks
) -> Finish:
    """Append each delta as a ``token`` event, under the first-token and then the stall clock."""
    producer = gevent.getcurrent()
    # One clock for the whole run, touched by every item: a timer per token would cost more than
    # the token (see idle_timer.py). When it runs out, it throws UpstreamSilent into this greenlet
    # wherever it is blocked, as gevent.Timeout would.
    clock = IdleTimer(clocks.first_token_seconds, lambda: producer.throw(UpstreamSilent))
    code = "first_token_timeout"
    try:
        for item in answer:
            if isinstance(item, Finish):
                return item
            if not item.text:
                # Data without answer text (a reasoning model's thinking): the upstream is alive, so
                # the running clock starts over, but the first token is still to come.
                clock.touch()
                continue
            if code == "first_token_timeout":
                clock.restart(clocks.stall_seconds)
                code = "stalled"
            else:
                clock.touch()
            store.append_token(run_id, item.text, item.tokens)
        raise ProviderFailure("internal", detail="provider ended without a Finish")
    except UpstreamSilent:
        raise ProviderFailure(code, detail=f"no data for {clock.seconds} s") from None
    finally:
        clock.cancel()
        answer.close()
