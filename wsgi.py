"""The WSGI entry point that gunicorn loads (``wsgi_app = "wsgi:app"`` in gunicorn.conf.py).

The app's loggers are joined to gunicorn's error log, so that run failures (with their run id and
the upstream's own words, which never reach the client) land where operators look.
"""

import logging

from app import create_app

app = create_app()

_gunicorn_log = logging.getLogger("gunicorn.error")
if _gunicorn_log.handlers:
    _streamchat_log = logging.getLogger("streamchat")
    _streamchat_log.handlers = _gunicorn_log.handlers
    _streamchat_log.setLevel(_gunicorn_log.level)
