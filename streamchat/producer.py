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

A run still generating MAX_RUN_SECONDS after it started is killed the same way with ``RunDeadline``
and ends with ``fail`` ``deadline_exceeded``, its text kept. However a run ends, ``on_end`` is then
called with the completion tokens it spent (the upstream's usage, else the tokens counted), which
releases the client's slot and charges the day's budget (streamchat/guards.py).

If the run store loses the run (Redis unreachable, or this worker's lease taken away), the store has
already ended it for the readers it can still reach; the producer only closes the upstream and ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass

import gevent

from streamchat import metrics
from streamchat.chat_request import ChatRequest
from streamchat.idle_timer import IdleTimer
from streamchat.lifecycle import Lifecycle, ShutdownRun
from streamchat.protocol import DONE, FAIL, FINISH_STOPPED, START, FailCode, fail_data
from streamchat.providers.base import Delta, Finish, Provider, ProviderFailure
from streamchat.redact import upstream_text
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


class RunDeadline(gevent.GreenletExit):
    """Thrown into a producer greenlet still running MAX_RUN_SECONDS after it started."""


@dataclass(frozen=True)
class Clocks:
    """How long the upstream may stay silent (before the first token, between tokens), and how long
    a whole run may last (0: no limit)."""

    first_token_seconds: float
    stall_seconds: float
    run_seconds: float = 0.0


@dataclass
class _RunNotes:
    """What the producer keeps for the guards: texts never to log, and the usage the upstream reported."""

    hide: tuple[str, ...] = ()
    usage_tokens: int | None = None


def start_run(
    store: RunStore,
    provider: Provider,
    request: ChatRequest,
    *,
    system_prompt: str,
    clocks: Clocks,
    lifecycle: Lifecycle,
    client: str = "",
    log_format: str = "text",
    on_end: Callable[[int], None] | None = None,
) -> str:
    """Create a run, log its ``start`` event, and spawn the greenlet that fills the rest.

    ``client`` (the client's address) and ``log_format`` are for the run's log line only.
    """
    run_id = store.create(request.model)
    store.append(run_id, START, {"run": run_id, "model": request.model})
    answer = provider.stream(request, system_prompt)  # a generator: nothing runs until the greenlet
    report = metrics.run_started(run_id, request.model, client, log_format)
    # The conversation's texts, kept out of the log should an upstream quote them in an error.
    notes = _RunNotes(hide=tuple(message["content"] for message in request.messages))
    production = _Production(store, run_id, report, notes, on_end)
    producer = gevent.spawn(production.produce, answer, clocks)
    lifecycle.add_producer(producer)
    # A kill that lands before the greenlet first runs keeps it from running at all, so its own
    # ending never runs either: this link (called by the hub, so it may not block) sees to it then.
    producer.rawlink(production.if_never_ran)
    store.on_stop(run_id, lambda: producer.kill(StopRun, block=False))
    if clocks.run_seconds:
        production.deadline = gevent.get_hub().loop.timer(clocks.run_seconds)
        production.deadline.start(producer.kill, RunDeadline, False)
    return run_id


class _Production:
    """One run's producer: the greenlet's body, and what the run does once when it ends, however.

    The ending is the producer greenlet's own last act: not ``link`` callbacks, each of which gevent
    runs in a greenlet of its own, several per run, which a run of one token felt (the benchmark's
    start-cost step, docs/performance.md).
    """

    __slots__ = ("deadline", "notes", "on_end", "report", "run_id", "started", "store")

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        report: metrics.RunReport,
        notes: _RunNotes,
        on_end: Callable[[int], None] | None,
    ) -> None:
        self.store, self.run_id, self.report, self.notes, self.on_end = store, run_id, report, notes, on_end
        self.deadline = None  # the MAX_RUN_SECONDS timer, if any
        self.started = False

    def produce(self, answer: Generator[Delta | Finish, None, None], clocks: Clocks) -> None:
        """The producer greenlet: relay the answer, then end the run, whatever happened meanwhile."""
        self.started = True
        outcome: BaseException | None = None
        try:
            _produce(self.store, self.run_id, answer, clocks, self.report, self.notes)
        except BaseException as err:  # a bug of ours, or a kill that landed while the run was ending
            outcome = err
            raise
        finally:
            self.end(outcome)

    def end(self, outcome: BaseException | None) -> None:
        """End the run if the producer left it live, count it, free the client's slot.

        Called once: by ``produce`` as its last act, or by ``if_never_ran`` for a producer that never
        started (``started`` is the first thing ``produce`` sets, before it can be switched away).
        """
        if self.deadline is not None:
            self.deadline.close()
        try:
            _finish_if_live(self.store, self.run_id, outcome, self.report)
        finally:
            if self.on_end is not None:
                # Completion tokens: as the upstream reported them, else as counted.
                usage = self.notes.usage_tokens
                self.on_end(self.report.tokens if usage is None else usage)

    def if_never_ran(self, producer: gevent.Greenlet) -> None:
        """Called by the hub when the producer is dead: end the run of one that never ran."""
        if not self.started:
            # Killed before it started: its value is the kill's exception (StopRun, ShutdownRun, ...).
            gevent.spawn(self.end, producer.value if producer.successful() else producer.exception)


def _finish_if_live(
    store: RunStore, run_id: str, outcome: BaseException | None, report: metrics.RunReport
) -> None:
    """End a run that its producer left live: stopped if killed, else internal; then count it."""
    try:
        if not store.accepts_events(run_id):
            return
        if isinstance(outcome, ShutdownRun):  # killed before it could run, by a stopping worker
            _finish(store, run_id, FAIL, fail_data(FailCode.SHUTDOWN), report)
        elif isinstance(outcome, RunDeadline):
            _finish(store, run_id, FAIL, fail_data(FailCode.DEADLINE_EXCEEDED), report)
        elif outcome is None or isinstance(outcome, gevent.GreenletExit):  # StopRun before it could run
            _finish(store, run_id, DONE, {"finish_reason": FINISH_STOPPED}, report)
        else:
            log.error("run %s: producer crashed: %r", run_id, outcome)
            _finish(store, run_id, FAIL, fail_data(FailCode.INTERNAL), report)
    except StoreUnavailable:
        log.warning("run %s: the run store was lost before the run could end", run_id)
        if report.outcome is None:
            report.lost(FailCode.STORE_UNAVAILABLE)
    finally:
        # The one place every run passes once, however it ended: its metrics and its log line.
        metrics.run_finished(report)


def _finish(store: RunStore, run_id: str, name: str, data: dict, report: metrics.RunReport) -> None:
    """Append the run's terminal event, and note it for the run's log line."""
    store.finish(run_id, name, data)
    report.ended(name, data)


def _produce(
    store: RunStore,
    run_id: str,
    answer: Generator[Delta | Finish, None, None],
    clocks: Clocks,
    report: metrics.RunReport,
    notes: _RunNotes,
) -> None:
    """Relay the provider's answer into the log and end it with exactly one terminal event."""
    try:
        try:
            finish = _relay(store, run_id, answer, clocks, report)
        except RunDeadline:
            log.info("run %s: still running after %g s: deadline_exceeded", run_id, clocks.run_seconds)
            _finish(store, run_id, FAIL, fail_data(FailCode.DEADLINE_EXCEEDED), report)
        except StopRun:
            log.info("run %s: stopped", run_id)
            _finish(store, run_id, DONE, {"finish_reason": FINISH_STOPPED}, report)
        except ShutdownRun:
            log.info("run %s: ended by shutdown", run_id)
            _finish(store, run_id, FAIL, fail_data(FailCode.SHUTDOWN), report)
        except ProviderFailure as failure:
            # The upstream's own words, redacted and cut: it may quote our key or the prompt back.
            detail = upstream_text(failure.detail or failure.message, notes.hide)
            log.warning("run %s: failed with %s: %s", run_id, failure.code, detail)
            metrics.upstream_failed(failure.code)
            _finish(store, run_id, FAIL, failure.event_data(), report)
        except (StoreUnavailable, RunNotFound):
            raise
        except Exception:
            # A bug of ours (or a provider's): log it with its traceback, show the user a safe message.
            log.exception("run %s: internal error", run_id)
            _finish(store, run_id, FAIL, fail_data(FailCode.INTERNAL), report)
        else:
            done: dict = {"finish_reason": finish.reason}
            if finish.usage is not None:
                done["usage"] = finish.usage
                if isinstance(finish.usage.get("completion_tokens"), int):
                    notes.usage_tokens = finish.usage["completion_tokens"]
            _finish(store, run_id, DONE, done, report)
    except (StoreUnavailable, RunNotFound) as err:
        # The store ended the run for its readers already; the upstream is closed by _relay's finally.
        log.warning("run %s: the run store lost the run: %r", run_id, err)
        lost = FailCode.STORE_UNAVAILABLE if isinstance(err, StoreUnavailable) else FailCode.WORKER_LOST
        report.lost(lost)


def _relay(
    store: RunStore,
    run_id: str,
    answer: Generator[Delta | Finish, None, None],
    clocks: Clocks,
    report: metrics.RunReport,
) -> Finish:
    """Append each delta as a ``token`` event, under the first-token and then the stall clock."""
    producer = gevent.getcurrent()
    # One clock for the whole run, touched by every item: a timer per token would cost more than
    # the token (see idle_timer.py). When it runs out, it throws UpstreamSilent into this greenlet
    # wherever it is blocked, as gevent.Timeout would.
    clock = IdleTimer(clocks.first_token_seconds, lambda: producer.throw(UpstreamSilent))
    waiting_for_first_token = True
    # Counted in a local and handed to the report once, at the end: the metrics cost nothing per token.
    tokens = 0
    try:
        for item in answer:
            if isinstance(item, Finish):
                return item
            if not item.text:
                # A SIGN_OF_LIFE (providers/base.py), data without answer text (a reasoning model's
                # thinking): the upstream is alive, so the running clock starts over, but the first
                # token is still to come.
                clock.touch()
                continue
            if waiting_for_first_token:
                clock.restart(clocks.stall_seconds)
                waiting_for_first_token = False
                report.first_token()
            else:
                clock.touch()
            store.append_token(run_id, item.text, item.tokens)
            tokens += item.tokens
        raise ProviderFailure(FailCode.INTERNAL, detail="provider ended without a Finish")
    except UpstreamSilent:
        code = FailCode.FIRST_TOKEN_TIMEOUT if waiting_for_first_token else FailCode.STALLED
        raise ProviderFailure(code, detail=f"no data for {clock.seconds} s") from None
    finally:
        report.tokens = tokens
        clock.cancel()
        answer.close()
