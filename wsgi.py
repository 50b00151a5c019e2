"""The WSGI entry point that gunicorn loads (``wsgi_app = "wsgi:app"`` in gunicorn.conf.py).

The app's loggers are joined to gunicorn's error log, so that run failures (with their run id and
the upstream's own words, which never reach the client) land where operators look, and so does the
one line each run leaves when it ends (streamchat/metrics.py). Every line of gunicorn's logs passes
a redacting filter first (streamchat/redact.py), so that no key or token is ever written.
"""

import logging

from app import create_app
from streamchat import redact
from streamchat.metrics import join_run_log

app = create_app()

_gunicorn_log = logging.getLogger("gunicorn.error")
if _gunicorn_log.handlers:
    _streamchat_log = logging.getLogger("streamchat")
    _streamchat_log.handlers = _gunicorn_log.handlers
    _streamchat_log.setLevel(_gunicorn_log.level)
    # Each run's log line goes to the same error log, without gunicorn's prefix: with LOG_FORMAT=json
    # it is a JSON object alone on its line.
    join_run_log(_gunicorn_log.handlers)

_settings = app.extensions["streamchat"].settings
redact.install(
    [*_gunicorn_log.handlers, *logging.getLogger("gunicorn.access").handlers],
    secrets=[_settings.openai_api_key, _settings.access_token],
)
