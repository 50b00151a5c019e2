"""The HTTP routes: read and validate the request, then hand plain values to runs and readers.

| route                        | what it does                                                   |
| ---------------------------- | -------------------------------------------------------------- |
| GET  /                       | the page                                                       |
| POST /stream                 | start a run and stream its events in this response (fetch, curl) |
| POST /runs                   | start a run; 201 with its id and URLs (then EventSource GETs)  |
| GET  /runs/<id>              | the run's status as JSON                                       |
| GET  /runs/<id>/stream       | the run's events as SSE, from the start or after Last-Event-ID  |
| POST /runs/<id>/stop         | stop the run (the upstream is closed)                          |
| GET  /healthz                | 200 while the run store answers, else 503                      |
| GET  /metrics                | Prometheus metrics: loopback clients, or with the access token |

Beside them: ``POST /session`` and ``DELETE /session`` (signing in, streamchat/session.py) and
``GET /openapi.json`` (streamchat/openapi.py). Before any view runs, the request guards
(streamchat/guards.py) have checked the host, the origin, the credentials and read the body; a view
that starts a run asks ``admit_run`` for the client's limits once the body is valid.

Everything a stream needs is read from ``request`` here, in the view, before the response starts:
bad input is then a JSON 4xx, and the generator never touches ``request`` (which is gone by the
time a streaming response body is iterated).

Try it::

    curl -N localhost:8000/stream -H 'content-type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hello"}]}'
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for

from streamchat import metrics
from streamchat.api_errors import ApiError, body_too_large
from streamchat.chat_request import parse_chat_request
from streamchat.config import Settings
from streamchat.guards import admit_run, carries_access_token, sign_in_state
from streamchat.lifecycle import Lifecycle
from streamchat.producer import Clocks, start_run
from streamchat.protocol import RUNNING
from streamchat.providers.base import Provider
from streamchat.reader import SSE_HEADERS, stream_run
from streamchat.runs import EventsDropped, RunNotFound, RunStore, StoreUnavailable, TooManyRuns
from streamchat.send_watch import watch_sends

bp = Blueprint("chat", __name__)

# A placeholder the page replaces with a run id, so URL templates come from url_for, not the JS.
RUN_ID_PLACEHOLDER = "RUN_ID"


@dataclass(frozen=True)
class Services:
    """What the views share, built once per worker by create_app."""

    settings: Settings
    store: RunStore
    provider: Provider
    lifecycle: Lifecycle


def services() -> Services:
    """Return this app's settings, run store and provider."""
    return current_app.extensions["streamchat"]


@bp.get("/")
def index() -> str:
    """Serve the page, with the API's URLs as templates in data- attributes."""
    app_services = services()
    return render_template(
        "index.html",
        models=app_services.settings.models,
        demo_model=app_services.settings.provider_name == "demo",  # the hint names its /demo commands
        urls={
            "stream": url_for("chat.stream"),
            "runs": url_for("chat.create_run"),
            "run_stream": url_for("chat.run_stream", run_id=RUN_ID_PLACEHOLDER),
            "run_stop": url_for("chat.stop_run", run_id=RUN_ID_PLACEHOLDER),
        },
        run_id_placeholder=RUN_ID_PLACEHOLDER,
        heartbeat_seconds=app_services.settings.heartbeat_seconds,
        # "off" (no ACCESS_TOKEN), "needed" (show the sign-in form) or "done" (signed in).
        sign_in=sign_in_state(),
    )


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Say whether this worker can serve runs: 200, or 503 while its run store cannot be reached."""
    store = services().store
    try:
        store.check_health()
    except StoreUnavailable as err:
        return jsonify({"status": "unavailable", "store": store.kind, "message": str(err)}), 503
    return jsonify({"status": "ok", "store": store.kind}), 200


@bp.get("/metrics")
def metrics_page() -> Response:
    """Serve the Prometheus metrics (every worker's) to loopback clients or token holders; else 403."""
    # The address as the app sees it: behind nginx with PROXY_HOPS=1, the client's, not nginx's. When
    # ACCESS_TOKEN is set, a client that carries it may scrape from anywhere (the guards leave this
    # route public, so that a loopback scraper needs no token).
    if not metrics.metrics_allowed(request.remote_addr, has_access_token=carries_access_token()):
        raise ApiError(
            403, "forbidden", "The metrics are served to loopback clients or with the access token."
        )
    body, content_type = metrics.render()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


@bp.post("/stream")
def stream() -> Response:
    """Start a run and stream it in this response (one step: fetch readers and curl)."""
    app_services = services()
    run_id = _start_run_from_request(app_services)
    return _sse_response(app_services, run_id, after_id=0)


@bp.post("/runs")
def create_run() -> tuple[Response, int, dict[str, str]]:
    """Start a run and answer with where to read it (two steps: EventSource can only GET)."""
    run_id = _start_run_from_request(services())
    body = {
        "id": run_id,
        "stream_url": url_for("chat.run_stream", run_id=run_id),
        "stop_url": url_for("chat.stop_run", run_id=run_id),
    }
    return jsonify(body), 201, {"Location": url_for("chat.run_status", run_id=run_id)}


@bp.get("/runs/<run_id>")
def run_status(run_id: str) -> Response:
    """Report a run's state as JSON."""
    status = services().store.status(run_id)
    if status is None:
        raise _unknown_run(run_id)
    return jsonify(status.as_json())


@bp.get("/runs/<run_id>/stream")
def run_stream(run_id: str) -> Response:
    """Stream a run's events, from the start or after Last-Event-ID (header wins over query)."""
    after_id = _last_event_id()
    app_services = services()
    status = app_services.store.status(run_id)
    # 204 tells EventSource to stop reconnecting: nothing is left to send, or nothing is known.
    if status is None or (status.state != RUNNING and after_id >= status.last_event_id):
        return Response(status=204)
    if after_id > status.last_event_id:
        raise ApiError(
            400, "invalid_last_event_id", f"Last-Event-ID {after_id} is ahead of the run's last event."
        )
    try:
        # A read of the first event checks, before the response starts, that the log still holds
        # the events (the reader then reads them all).
        app_services.store.read(run_id, after_id, limit=1)
    except RunNotFound:
        return Response(status=204)  # expired just now
    except EventsDropped:
        raise ApiError(
            409,
            "events_dropped",
            f"The events after id {after_id} are no longer kept; start the request again.",
        ) from None
    return _sse_response(app_services, run_id, after_id)


@bp.post("/runs/<run_id>/stop")
def stop_run(run_id: str) -> tuple[Response, int]:
    """Stop a live run (202) or report a finished one's outcome (200); stopping twice is fine."""
    status = services().store.request_stop(run_id)
    if status is None:
        raise _unknown_run(run_id)
    metrics.stop_requested()
    return jsonify(status.as_json()), 202 if status.state == RUNNING else 200


def _start_run_from_request(app_services: Services) -> str:
    """Validate the JSON body and start a run for it."""
    settings = app_services.settings
    chat = parse_chat_request(_json_body(settings.max_request_bytes), settings)
    admission = admit_run()  # the client's rate, live runs and the day's budget: a 429 says which
    if app_services.lifecycle.shutting_down:
        # A kept-alive connection can still bring a request to a worker that is stopping.
        raise ApiError(503, "shutting_down", "This server process is restarting. Try again.")
    try:
        run_id = start_run(
            app_services.store,
            app_services.provider,
            chat,
            system_prompt=settings.system_prompt,
            clocks=Clocks(
                settings.first_token_timeout_seconds, settings.stall_timeout_seconds, settings.max_run_seconds
            ),
            lifecycle=app_services.lifecycle,
            # For the run's log line only (hashed there): the address as the app sees it.
            client=request.remote_addr or "",
            log_format=settings.log_format,
            on_end=admission.run_ended,  # frees the client's slot, charges the budget
        )
    except TooManyRuns:
        raise ApiError(503, "too_many_runs", "The server is at capacity. Try again shortly.") from None
    admission.started(run_id)
    return run_id


def _json_body(limit: int) -> object:
    """Return the decoded JSON body, or raise a 415/400 that says what is wrong."""
    if request.mimetype != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "Send the body as JSON (Content-Type: application/json)."
        )
    # A Content-Length over MAX_CONTENT_LENGTH (our limit + 1) is a 413 before anything is read. A
    # chunked body has no length: Werkzeug stops reading it at MAX_CONTENT_LENGTH, so a body read
    # past our limit is too large, whichever way it came.
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise body_too_large(limit)
    try:
        return json.loads(raw)
    except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {err}.") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "The body is nested too deeply.") from None


def _last_event_id() -> int:
    """Read the resume position: the Last-Event-ID header, else ?last_event_id=, else 0."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.args.get("last_event_id", "0")
    raw = raw.strip()
    # At most 18 digits: any real event id fits, and int() of a huge string is refused anyway.
    if not raw.isdigit() or not raw.isascii() or len(raw) > 18:
        raise ApiError(400, "invalid_last_event_id", f"Last-Event-ID must be an event id, got {raw!r}.")
    return int(raw)


def _sse_response(app_services: Services, run_id: str, after_id: int) -> Response:
    """Wrap the run's reader generator in a streaming response with the SSE headers."""
    settings = app_services.settings
    client_socket = request.environ.get("gunicorn.socket")
    frames = stream_run(
        app_services.store,
        run_id,
        after_id,
        heartbeat_seconds=settings.heartbeat_seconds,
        retry_milliseconds=settings.sse_retry_milliseconds,
        client_socket=client_socket,
        lifecycle=app_services.lifecycle,
    )
    # A client that stays connected but stops reading is cut after SEND_TIMEOUT_SECONDS.
    body = watch_sends(frames, client_socket, settings.send_timeout_seconds)
    # direct_passthrough: the generator already yields bytes, so werkzeug hands it to the server
    # as it is, without wrapping it in two more iterators that every token would pass through.
    return Response(body, headers=SSE_HEADERS, direct_passthrough=True)


def _unknown_run(run_id: str) -> ApiError:
    return ApiError(404, "unknown_run", f"No run {run_id!r} here (unknown, or expired).")
