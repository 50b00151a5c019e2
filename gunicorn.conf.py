"""gunicorn settings: plain Python, read by a bare ``gunicorn`` in this folder.

Every knob can be overridden from the environment (the names below), and command-line flags win
over this file: ``gunicorn --bind 127.0.0.1:9000``.
"""

import os

# --- What to serve, and where ----------------------------------------------------------------------
wsgi_app = "wsgi:app"
# Loopback by default; put nginx in front for the outside world (see README, Deployment).
bind = os.environ.get("BIND", "127.0.0.1:8000")

# --- Workers -----------------------------------------------------------------------------------------
# gevent: each open stream is a greenlet, not a thread, so one process holds thousands of streams.
worker_class = "gevent"
# One worker by default: runs live in the worker's memory, so every request for a run must reach the
# worker that started it. More workers need a shared run store.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Open streams per worker. Each stream also holds an upstream connection, so keep the open-file
# limit (ulimit -n) above twice this.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))

# --- Time --------------------------------------------------------------------------------------------
# For gevent workers this is the heartbeat between worker and arbiter, not a per-request limit:
# streams may last far longer.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# On SIGTERM, open streams get this long to finish before the worker is killed.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "10"))
# Keep-alive between requests on one connection (the page's several requests, or nginx's upstream pool).
keepalive = int(os.environ.get("KEEPALIVE_SECONDS", "5"))

# --- Operations ----------------------------------------------------------------------------------------
# No shared control socket: several instances (tests, benchmarks) can run side by side.
control_socket_disable = True
# "-" is standard output; set ACCESS_LOG to empty to turn the access log off.
accesslog = os.environ.get("ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
