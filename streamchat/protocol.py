"""The protocol's names, in one place: events, fail codes, run states and HTTP error codes.

This is the twin of ``static/js/protocol.js``: the server writes these names, the page reads them,
and docs/protocol.md explains them. Nothing else in the package spells an event name or a code as a
string literal; it imports the constant from here, so a rename is one edit and a typo is a NameError.
(One exception, on purpose: the hot path's token frame, ``sse.encode_token``, spells its bytes whole;
tests/test_sse.py holds it to ``encode_event``.) An HTTP error code is spelled where its error is
raised, and ``ApiError`` refuses any code not listed here.

Two kinds of error code, kept apart on purpose:

- ``FAIL_CODES`` are the codes of the ``fail`` event: a run that *started* and then failed. They
  arrive inside the stream, with a safe message and a ``retryable`` flag for the page's Retry.
- ``HTTP_ERROR_CODES`` are the codes of the JSON error body ``{"error": {"code", "message"}}`` of a
  request refused *before* any stream starts (a 4xx or a 503).

A code may appear in both when the same trouble can meet a request at either moment (the run store
going away, for example): its meaning is the same, only the moment differs.

Try it::

    python -c "from streamchat.protocol import FAIL_CODES; print(*sorted(FAIL_CODES))"
"""

from __future__ import annotations

from enum import StrEnum

# --- Events (docs/protocol.md, "Events") -------------------------------------------------------------
START = "start"  # first event of every run: {"run", "model"}
TOKEN = "token"  # a piece of answer text: {"text", "tokens"}
DONE = "done"  # terminal: {"finish_reason", "usage"?}
FAIL = "fail"  # terminal: {"code", "message", "retryable", "retry_after"?}

EVENT_NAMES = (START, TOKEN, DONE, FAIL)
TERMINAL_EVENTS = frozenset({DONE, FAIL})

# The finish_reason of a ``done`` event for a run stopped by a stop request or by nobody reading it.
FINISH_STOPPED = "stopped"

# --- Run states (GET /runs/<id>) -----------------------------------------------------------------------
RUNNING = "running"
STATE_DONE = "done"
STATE_STOPPED = "stopped"
STATE_FAILED = "failed"
RUN_STATES = (RUNNING, STATE_DONE, STATE_STOPPED, STATE_FAILED)


# --- fail codes ----------------------------------------------------------------------------------------
class FailCode(StrEnum):
    """The code of a ``fail`` event. A StrEnum: it is its own string on the wire and in JSON."""

    UPSTREAM_AUTH = "upstream_auth"
    BAD_REQUEST = "bad_request"
    CONTEXT_TOO_LONG = "context_too_long"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"
    STALLED = "stalled"
    CONNECTION_LOST = "connection_lost"
    UPSTREAM_ERROR = "upstream_error"
    TRUNCATED = "truncated"
    MALFORMED_CHUNK = "malformed_chunk"
    INTERNAL = "internal"
    WORKER_LOST = "worker_lost"
    SHUTDOWN = "shutdown"
    STORE_UNAVAILABLE = "store_unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"


# code -> (retryable, safe message shown to the user)
FAIL_CODES: dict[str, tuple[bool, str]] = {
    FailCode.UPSTREAM_AUTH: (False, "The model server refused our credentials."),
    FailCode.BAD_REQUEST: (False, "The model server rejected the request."),
    FailCode.CONTEXT_TOO_LONG: (
        False,
        "The conversation is too long for this model. Shorten it or start anew.",
    ),
    FailCode.RATE_LIMITED: (True, "The model server is rate limiting us. Try again shortly."),
    FailCode.QUOTA_EXHAUSTED: (False, "The model account has run out of quota."),
    FailCode.UPSTREAM_UNAVAILABLE: (True, "The model server is unavailable right now."),
    FailCode.UPSTREAM_UNREACHABLE: (True, "The model server could not be reached."),
    FailCode.FIRST_TOKEN_TIMEOUT: (True, "The model did not start answering in time."),
    FailCode.STALLED: (True, "The model stopped sending in the middle of the answer."),
    FailCode.CONNECTION_LOST: (True, "The connection to the model server was lost mid-answer."),
    FailCode.UPSTREAM_ERROR: (False, "The model server reported an error while answering."),
    FailCode.TRUNCATED: (True, "The model server ended the answer without finishing it."),
    FailCode.MALFORMED_CHUNK: (False, "The model server sent data we could not read."),
    FailCode.INTERNAL: (False, "Something went wrong on our side."),
    # The run's producing process died (killed, or its host vanished); readers anywhere learn it.
    FailCode.WORKER_LOST: (True, "The server process writing this answer stopped. Try again."),
    # The server stopped (a restart or a deploy) before the run could finish.
    FailCode.SHUTDOWN: (True, "The server restarted before the answer was finished. Try again."),
    # The shared run store (Redis) failed in the middle of the run.
    FailCode.STORE_UNAVAILABLE: (
        True,
        "The server lost its run store in the middle of the answer. Try again.",
    ),
    # The run was still generating after MAX_RUN_SECONDS; the text so far is kept. Not retryable: the
    # same request would most likely run as long again.
    FailCode.DEADLINE_EXCEEDED: (False, "The answer took longer than this server allows and was ended."),
}


# --- HTTP error codes: the JSON body of a request refused before any stream starts -----------------------
HTTP_ERROR_CODES = frozenset(
    {
        "invalid_body",
        "invalid_field",
        "missing_field",
        "unknown_field",
        "unknown_model",
        "too_many_messages",
        "message_too_long",
        "invalid_json",
        "unsupported_media_type",
        "request_entity_too_large",
        "invalid_last_event_id",
        "unknown_run",
        "events_dropped",
        "too_many_runs",
        "store_unavailable",
        "shutting_down",
        # The request guards (streamchat/guards.py), in the order they run.
        "bad_host",  # 400: the Host header is not in ALLOWED_HOSTS
        "cross_origin",  # 403: a POST or DELETE from another origin
        "unauthorized",  # 401: ACCESS_TOKEN is set and the request has neither the token nor the cookie
        "request_timeout",  # 408: the body was not read within BODY_TIMEOUT_SECONDS
        "malformed_body",  # 400: the body's chunked framing is broken
        # 429s. Not "rate_limited": that is the fail code of an upstream that rate-limits *us*.
        "too_many_requests",  # RATE_LIMIT runs started (or failed sign-ins) per client
        "too_many_active_runs",  # MAX_RUNS_PER_CLIENT live runs at once
        "budget_exhausted",  # DAILY_TOKEN_BUDGET spent for this UTC day
        "forbidden",  # 403: GET /metrics from a client that is not on loopback (streamchat/metrics.py)
        # Flask's own refusals (app.py), in the same JSON body.
        "not_found",  # 404: no route has that path
        "method_not_allowed",  # 405: the route does not take that method (the Allow header lists them)
        "invalid_request",  # any other 4xx that Flask raises itself
        "internal_error",  # 500: a bug; the server log has the traceback
    }
)


def fail_data(code: str, retry_after: float | None = None) -> dict:
    """Return a ``fail`` event's payload for ``code``: its safe message and retryable flag."""
    retryable, message = FAIL_CODES[code]
    data: dict = {"code": str(code), "message": message, "retryable": retryable}
    if retry_after is not None:
        data["retry_after"] = retry_after
    return data
