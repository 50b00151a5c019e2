"""The producer: one greenlet per run that reads the model and appends events to the run's log.

Why a separate greenlet, and not a Flask generator that iterates the model directly: a generator
that blocks on the upstream cannot send heartbeats while the model is silent, cannot notice that
its reader left before the first token, and cannot be resumed by a second request. Here the HTTP
responses only read the log (streamchat/reader.py), so all of that falls out naturally.

The producer also owns the clocks: silence from the upstream for FIRST_TOKEN_TIMEOUT_SECONDS before
the first token, or for STALL_TIMEOUT_SECONDS after it, ends the run with a ``fail`` event (one
IdleTimer per run, streamchat/idle_timer.py). Any data counts as a sign of life, answer text or
not: a reasoning model may stream its thinking for minutes before it answers. A stop request (stop
endpoint, or no reader for the grace period) kills the greenlet with ``StopRun`` wherever it is
blocked; the provider's ``finally`` block then closes the upstream connection, so the model stops
generating (and billing) at once. A worker that is stopping kills it with ``ShutdownRun`` instead
(streamchat/lifecycle.py), and the run ends with ``fail`` ``shutdown``.

If the run store loses the run (Redis unreachable, or this worker's lease taken away), the store has
already ended it for the readers it can still reach; the producer only closes the upstream and ends.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass

import gevent

from streamchat.chat_request import ChatRequest
from streamchat.idle_timer import IdleTimer
from streamchat.lifecycle import Lifecycle, ShutdownRun
from streamchat.protocol import DONE, FAIL, FINISH_STOPPED, START, FailCode, fail_data
from streamchat.providers.base import Delta, Finish, Provider, ProviderFailure
from streamchat.runs import RunNotFound, RunStore, StoreUnavailable

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
    store: RunStore,
    provider: Provider,
    request: ChatRequest,
    *,
    system_prompt: str,
    clocks: Clocks,
    lifecycle: Lifecycle,
) -> str:
    """Create a run, log its ``start`` event, and spawn the greenlet that fills the rest."""
    run_id = store.create(request.model)
    store.append(run_id, START, {"run": run_id, "model": request.model})
    answer = provider.stream(request, system_prompt)  # a generator: nothing runs until the greenlet
    producer = gevent.spawn(_produce, store, run_id, answer, clocks)
    lifecycle.add_producer(producer)
    # Whatever happens, the run gets its terminal event when the greenlet ends. A kill that lands
    # before the greenlet first runs keeps it from running at all, so its own `except StopRun`
    # never sees it; and a bug while finishing would otherwise leave the run live forever.
    producer.link(lambda ended: _finish_if_live(store, run_id, ended))
    store.on_stop(run_id, lambda: producer.kill(StopRun, block=False))
    return run_id


def _finish_if_live(store: RunStore, run_id: str, producer: gevent.Greenlet) -> None:
    """End a run whose producer has ended without ending it: stopped if killed, else internal."""
    try:
        if not store.accepts_events(run_id):
            return
        if isinstance(producer.value, ShutdownRun):  # killed before it could run, by a stopping worker
            store.finish(run_id, FAIL, fail_data(FailCode.SHUTDOWN))
        elif producer.successful():  # killed (StopRun is a GreenletExit) before it could run
            store.finish(run_id, DONE, {"finish_reason": FINISH_STOPPED})
        else:
            log.error("run %s: producer crashed: %r", run_id, producer.exception)
            store.finish(run_id, FAIL, fail_data(FailCode.INTERNAL))
    except StoreUnavailable:
        log.warning("run %s: the run store was lost before the run could end", run_id)


def _produce(
    store: RunStore, run_id: str, answer: Generator[Delta | Finish, None, None], clocks: Clocks
) -> None:
    """Relay the provider's answer into the log and end it with exactly one terminal event."""
    try:
        try:
            finish = _relay(store, run_id, answer, clocks)
        except StopRun:
            log.info("run %s: stopped", run_id)
            store.finish(run_id, DONE, {"finish_reason": FINISH_STOPPED})
        except ShutdownRun:
            log.info("run %s: ended by shutdown", run_id)
            store.finish(run_id, FAIL, fail_data(FailCode.SHUTDOWN))
        except ProviderFailure as failure:
            log.warning("run %s: failed with %s: %s", run_id, failure.code, failure.detail or failure.message)
            store.finish(run_id, FAIL, failure.event_data())
        except (StoreUnavailable, RunNotFound):
            raise
        except Exception:
            # A bug of ours (or a provider's): log it with its traceback, show the user a safe message.
            log.exception("run %s: internal error", run_id)
            store.finish(run_id, FAIL, fail_data(FailCode.INTERNAL))
        else:
            done: dict = {"finish_reason": finish.reason}
            if finish.usage is not None:
                done["usage"] = finish.usage
            store.finish(run_id, DONE, done)
    except (StoreUnavailable, RunNotFound) as err:
        # The store ended the run for its readers already; the upstream is closed by _relay's finally.
        log.warning("run %s: the run store lost the run: %r", run_id, err)


def _relay(
    store: RunStore, run_id: str, answer: Generator[Delta | Finish, None, None], clocks: Clocks
) -> Finish:
    """Append each delta as a ``token`` event, under the first-token and then the stall clock."""
    producer = gevent.getcurrent()
    # One clock for the whole run, touched by every item: a timer per token would cost more than
    # the token (see idle_timer.py). When it runs out, it throws UpstreamSilent into this greenlet
    # wherever it is blocked, as gevent.Timeout would.
    clock = IdleTimer(clocks.first_token_seconds, lambda: producer.throw(UpstreamSilent))
    waiting_for_first_token = True
    try:
        for item in answer:
            if isinstance(item, Finish):
                return item
            if not item.text:
                # Data without answer text (a reasoning model's thinking): the upstream is alive, so
                # the running clock starts over, but the first token is still to come.
                clock.touch()
                continue
            if waiting_for_first_token:
                clock.restart(clocks.stall_seconds)
                waiting_for_first_token = False
            else:
                clock.touch()
            store.append_token(run_id, item.text, item.tokens)
        raise ProviderFailure(FailCode.INTERNAL, detail="provider ended without a Finish")
    except UpstreamSilent:
        code = FailCode.FIRST_TOKEN_TIMEOUT if waiting_for_first_token else FailCode.STALLED
        raise ProviderFailure(code, detail=f"no data for {clock.seconds} s") from None
    finally:
        clock.cancel()
        answer.close()
