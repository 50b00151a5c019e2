"""What operators see: the Prometheus metrics, and the one log line that each run leaves when it ends.

Where it sits: every count is taken where its event happens (the producer counts runs and tokens,
the reader counts readers, heartbeats and clients that leave, the stop route counts stop requests),
through the small functions below, so that each metric is named once, here. The metrics are defined
once, when this module is imported, never per ``create_app``: prometheus-client refuses a name
registered twice, and every app of a process shares one set of counters anyway.

Several gunicorn workers: each worker is its own process with its own counters, and a scrape reaches
one of them. prometheus-client's documented multiprocess mode solves it: with PROMETHEUS_MULTIPROC_DIR
set before the library is imported, every process writes its values to files in that directory, and
the worker that answers ``GET /metrics`` adds up all the files. gunicorn.conf.py gives each master a
fresh directory (``on_starting``) and drops a dead worker's gauges (``child_exit``); the gauges here
count live processes only (``livesum``). Without the variable (the Flask test client, ``flask run``)
the library keeps plain in-memory values and the default registry is served.

Who may read them (``GET /metrics`` in routes.py): clients on loopback as the app sees them (behind
nginx with PROXY_HOPS=1, the real client's address), or any client that carries ACCESS_TOKEN; others
get a 403. deploy/nginx.conf does not pass /metrics on from outside at all.

Deliberate choices:

- ``streamchat_tokens_relayed_total`` grows once per run, when the run ends, by the run's token
  count; it is not touched per token. In multiprocess mode every increment is a locked write to a
  memory-mapped file, and the per-token relay is the part of this service that has been made cheap
  (docs/performance.md): a run only adds one integer per token to a local counter. The price: a
  run's tokens appear when it ends, which a ``rate()`` over minutes does not mind.
- The run log line is written by its own logger (``streamchat.run_log``) and, under gunicorn, to the
  error log's stream with no prefix: with ``LOG_FORMAT=json`` the line is a JSON object alone on its
  line, which a log shipper can parse as it is. It never holds the prompt, the answer or a key; the
  client is a short hash of its address, so that runs of one client can be told apart from others
  without the address being written down. The hash is not anonymous: anyone can hash every IPv4
  address, so a log that matters should be kept like any log of personal data.
- ``readers`` in the log line counts the responses that read the run in the process that produced
  it. With the Redis store, readers attached to other workers are not seen from here.

Try it::

    curl -s localhost:8000/metrics | grep ^streamchat_
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from streamchat.protocol import STATE_FAILED, FailCode
from streamchat.runs.store import terminal_outcome

# Decided once, like prometheus-client decides it: the variable must be set before the first import.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

# --- The metrics (docs/deployment.md, "Metrics") --------------------------------------------------------
# prometheus-client adds `_total` to a counter's name itself.
RUNS_STARTED = Counter("streamchat_runs_started", "Runs started by POST /stream or POST /runs.")
RUNS_FINISHED = Counter(
    "streamchat_runs_finished",
    "Runs ended, by outcome (done, stopped, failed) and fail code (empty unless failed).",
    ["outcome", "code"],
)
# livesum: the sum over the processes still alive, so a dead worker's runs do not stay counted.
ACTIVE_RUNS = Gauge("streamchat_active_runs", "Runs being produced right now.", multiprocess_mode="livesum")
ACTIVE_READERS = Gauge(
    "streamchat_active_readers", "Responses streaming a run right now.", multiprocess_mode="livesum"
)
TIME_TO_FIRST_TOKEN = Histogram(
    "streamchat_time_to_first_token_seconds",
    "From a run's start to its first token of answer text.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
RUN_TOKENS = Histogram(
    "streamchat_run_tokens",
    "Tokens relayed per run, counted when the run ends.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000, 16000),
)
TOKENS_RELAYED = Counter(
    "streamchat_tokens_relayed", "Tokens relayed from the model, added when each run ends."
)
UPSTREAM_FAILURES = Counter(
    "streamchat_upstream_failures", "Runs the model server failed, by fail code.", ["code"]
)
CLIENT_DISCONNECTS = Counter(
    "streamchat_client_disconnects", "Responses whose client left before the run's last event."
)
STOP_REQUESTS = Counter("streamchat_stop_requests", "POST /runs/<id>/stop requests for a known run.")
HEARTBEATS = Counter("streamchat_heartbeats", "Heartbeat comments written to streaming responses.")


def render() -> tuple[bytes, str]:
    """Return the metrics page (every worker's values in multiprocess mode) and its content type."""
    if MULTIPROCESS:
        # A registry per scrape, as the library's docs show: it reads the directory's files afresh.
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def metrics_allowed(remote_addr: str | None, has_access_token: bool = False) -> bool:
    """Tell whether a client may read the metrics: from loopback, or holding the access token."""
    if has_access_token:
        return True
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:  # a unix socket's empty address, or anything that is not an IP address
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack listener
    return address.is_loopback


# --- Counted where the event happens ------------------------------------------------------------------


def upstream_failed(code: str) -> None:
    """Count a run that the model server failed (the producer caught a ProviderFailure)."""
    UPSTREAM_FAILURES.labels(code=code).inc()


def stop_requested() -> None:
    """Count a stop request for a known run (a repeated stop counts again)."""
    STOP_REQUESTS.inc()


def heartbeat_sent() -> None:
    """Count one heartbeat comment written to a response."""
    HEARTBEATS.inc()


def client_disconnected() -> None:
    """Count a response whose client left before the run's last event."""
    CLIENT_DISCONNECTS.inc()


def reader_attached(run_id: str) -> None:
    """Count a response that starts reading a run (its run's report counts it too, if produced here)."""
    ACTIVE_READERS.inc()
    report = _reports.get(run_id)
    if report is not None:
        report.readers += 1


def reader_detached() -> None:
    """Count out a response that stopped reading."""
    ACTIVE_READERS.dec()


# --- One run, from start to its log line ---------------------------------------------------------------

# The reports of the runs this process produces, by run id, so that a reader here can be counted in.
_reports: dict[str, RunReport] = {}


class RunReport:
    """What one run tells the operators when it ends: filled in by the producer as the run goes."""

    __slots__ = (
        "client",
        "code",
        "finish_reason",
        "first_token_at",
        "log_format",
        "model",
        "outcome",
        "readers",
        "run_id",
        "started_at",
        "tokens",
    )

    def __init__(self, run_id: str, model: str, client: str, log_format: str) -> None:
        self.run_id, self.model, self.client, self.log_format = run_id, model, client, log_format
        self.started_at = time.monotonic()
        self.first_token_at: float | None = None
        self.tokens = 0
        self.readers = 0
        self.outcome: str | None = None
        self.code: str | None = None
        self.finish_reason: str | None = None

    def first_token(self) -> None:
        """Record the first token of answer text (once per run: the producer calls it once)."""
        self.first_token_at = time.monotonic()
        TIME_TO_FIRST_TOKEN.observe(self.first_token_at - self.started_at)

    def ended(self, name: str, data: dict) -> None:
        """Record the run's terminal event (``done`` or ``fail``) and its data."""
        self.outcome, self.finish_reason, self.code = terminal_outcome(name, data)

    def lost(self, code: str) -> None:
        """Record a run that the store ended for its readers (the producer could not write its end)."""
        self.outcome, self.code = STATE_FAILED, str(code)

    def fields(self, now: float) -> dict:
        """Return the log line's fields, in their fixed order."""
        ttft = None if self.first_token_at is None else round((self.first_token_at - self.started_at) * 1000)
        return {
            "run": self.run_id,
            "model": self.model,
            "outcome": self.outcome,
            "code": self.code,
            "finish_reason": self.finish_reason,
            "ttft_ms": ttft,
            "tokens": self.tokens,
            "duration_ms": round((now - self.started_at) * 1000),
            "readers": self.readers,
            "client": client_hash(self.client),
        }


def run_started(run_id: str, model: str, client: str, log_format: str) -> RunReport:
    """Count a run in, and return the report its producer fills in."""
    RUNS_STARTED.inc()
    ACTIVE_RUNS.inc()
    report = RunReport(run_id, model, client, log_format)
    _reports[run_id] = report
    return report


def run_finished(report: RunReport) -> None:
    """Count a run out and write its log line (once, when its producer has ended)."""
    _reports.pop(report.run_id, None)
    if report.outcome is None:  # cannot happen unless the producer has a bug; still counted
        report.lost(FailCode.INTERNAL)
    ACTIVE_RUNS.dec()
    RUNS_FINISHED.labels(outcome=report.outcome, code=report.code or "").inc()
    # Once per run, not per token: see the module docstring.
    TOKENS_RELAYED.inc(report.tokens)
    RUN_TOKENS.observe(report.tokens)
    if run_log.isEnabledFor(logging.INFO):  # LOG_LEVEL=warning turns the lines off: build none
        run_log.info(format_run_line(report.fields(time.monotonic()), report.log_format))


# --- The run log line ------------------------------------------------------------------------------------

run_log = logging.getLogger("streamchat.run_log")


def client_hash(address: str) -> str:
    """Return a short hash of a client's address (12 hex digits), or "" when it is unknown."""
    if not address:
        return ""
    return hashlib.blake2b(address.encode(), digest_size=6).hexdigest()


def format_run_line(fields: dict, log_format: str) -> str:
    """Render the run's fields as one JSON object, or as ``key=value`` pairs (None as ``-``)."""
    if log_format == "json":
        return json.dumps(fields, separators=(",", ":"))
    return " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())


def _text_value(value: object) -> str:
    """One value of a text line: ``-`` for none; JSON-quoted if it holds a space, quote or ``=``."""
    if value is None:
        return "-"
    text = str(value)
    if text == "" or any(char in text for char in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text


class _BareLine(logging.Handler):
    """Write each record as its message alone, to the stream of one of gunicorn's log handlers.

    The stream is looked up at each line, not kept: gunicorn reopens its log files on SIGUSR1.
    A handler without a stream (syslog) gets the record as it is, with its own format.
    """

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if not self.target.filter(record):  # the target's filters (redaction) still apply
            return
        stream = getattr(self.target, "stream", None)
        if stream is None:
            self.target.handle(record)
            return
        self.target.acquire()
        try:
            stream.write(record.getMessage() + "\n")
            stream.flush()
        except OSError:
            self.handleError(record)
        finally:
            self.target.release()


def join_run_log(handlers: list[logging.Handler]) -> None:
    """Send the run lines to these handlers' streams (gunicorn's error log) with no prefix."""
    run_log.handlers = [_BareLine(handler) for handler in handlers]
    run_log.propagate = False  # else the parent's handler writes the line again, with its prefix
