"""The face of the service: ``create_app`` builds the Flask app from settings.

A request's journey: gunicorn (gunicorn.conf.py, gevent worker) -> wsgi.py -> this app ->
streamchat/routes.py (validate, start a run) -> streamchat/producer.py (the model, in its own
greenlet) -> streamchat/runs.py (the run's event log) -> streamchat/streaming.py (SSE to the client).

Run it::

    gunicorn                  # serves http://127.0.0.1:8000 with the offline demo model

``create_app(test_config)`` takes overrides of any setting in streamchat/config.py by field name,
for tests: ``create_app({"heartbeat_seconds": 0.2})``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from streamchat.chat_request import ApiError
from streamchat.config import Settings
from streamchat.providers import make_provider
from streamchat.routes import Services, bp
from streamchat.runs import MemoryRunStore


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment (plus test overrides), store, provider, routes."""
    app = Flask(__name__)
    settings = Settings.from_env()
    if test_config:
        settings = settings.with_overrides(**test_config)
    # Flask refuses a body whose Content-Length is past this size with a 413. One byte over our
    # limit: a chunked body has no length, Werkzeug stops reading it here, and routes.py checks the
    # length it read, so a body of exactly the limit passes both ways and one byte more fails both.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes + 1
    # Keep JSON keys in the order we write them: the README's examples read better.
    app.json.sort_keys = False
    store = MemoryRunStore(
        event_log_size=settings.event_log_size,
        ttl_seconds=settings.run_ttl_seconds,
        max_active_runs=settings.max_active_runs,
        grace_seconds=settings.disconnect_grace_seconds,
    )
    app.extensions["streamchat"] = Services(settings, store, make_provider(settings))
    app.register_blueprint(bp)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _api_error(err: ApiError) -> tuple[Any, int]:
    """Answer a refused request with the API's JSON error body."""
    return jsonify(err.body()), err.status


def _http_error(err: HTTPException) -> tuple[Any, int]:
    """Give Flask's own errors (404 route, 405, 413) the same JSON shape as ours."""
    code = (err.name or "error").lower().replace(" ", "_")
    status = err.code or 500
    return jsonify({"error": {"code": code, "message": err.description or err.name}}), status
