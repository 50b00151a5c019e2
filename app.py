"""The face of the service: ``create_app`` builds the Flask app from settings.

A request's journey: gunicorn (gunicorn.conf.py, gevent worker) -> wsgi.py -> this app ->
streamchat/guards.py (host, origin, auth, body, limits: what the service refuses) ->
streamchat/routes.py (validate, start a run) -> streamchat/producer.py (the model, in its own
greenlet) -> streamchat/runs/ (the run's event log, in memory or Redis) -> streamchat/reader.py
(SSE to the client).

Run it::

    gunicorn                  # serves http://127.0.0.1:8000 with the offline demo model

``create_app(test_config)`` takes overrides of any setting in streamchat/config.py by field name,
for tests: ``create_app({"heartbeat_seconds": 0.2})``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app
from werkzeug.exceptions import HTTPException

from streamchat import openapi, session
from streamchat.api_errors import ApiError, body_too_large, store_unavailable
from streamchat.browser_headers import add_security_headers
from streamchat.config import Settings
from streamchat.guards import Guards
from streamchat.lifecycle import Lifecycle
from streamchat.providers import make_provider
from streamchat.routes import Services, bp
from streamchat.runs import StoreUnavailable, make_store


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
    # Memory (one worker) or Redis (REDIS_URL: several workers and hosts); see streamchat/runs/.
    store = make_store(settings)
    app.extensions["streamchat"] = Services(settings, store, make_provider(settings), Lifecycle())
    # The request guards first: their checks run before every view, in a fixed order (guards.py).
    Guards(settings, store).install(app)
    app.register_blueprint(bp)
    app.register_blueprint(session.bp)
    app.register_blueprint(openapi.bp)
    # CSP, nosniff, no referrer: on every response, the page's and the API's alike.
    app.after_request(add_security_headers)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(StoreUnavailable, _store_unavailable)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _api_error(err: ApiError) -> tuple[Any, int, dict[str, str]]:
    """Answer a refused request with the API's JSON error body (and Retry-After, when known)."""
    return err.response()


def _store_unavailable(err: StoreUnavailable) -> tuple[Any, int]:
    """A route that needs the run store while it is down: 503 before any stream starts."""
    return store_unavailable().response()


# Flask's own refusals, named in HTTP_ERROR_CODES like ours; any other is a 4xx or a 5xx in general.
_FLASK_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


def _http_error(err: HTTPException) -> tuple[Any, int, dict[str, str]]:
    """Give Flask's own errors (no such route, a method it does not take, ...) our JSON error body."""
    status = err.code or 500
    if status == 413:  # a Content-Length past MAX_CONTENT_LENGTH: the route's own 413, word for word
        error = body_too_large(current_app.extensions["streamchat"].settings.max_request_bytes)
    else:
        code = _FLASK_ERROR_CODES.get(status, "internal_error" if status >= 500 else "invalid_request")
        error = ApiError(status, code, err.description or err.name)
    # Its headers but the HTML content type: a 405's Allow, which HTTP requires with it.
    headers = {name: value for name, value in err.get_headers() if name.lower() != "content-type"}
    body, status, extra = error.response()
    return body, status, {**headers, **extra}
