"""gunicorn's worker hooks, as plain functions that gunicorn.conf.py calls.

Where it sits: gunicorn.conf.py's ``post_worker_init`` starts ``watch_for_shutdown`` in each
worker, and ``worker_exit`` calls ``exit_worker``. They connect gunicorn's way of stopping a worker
(SIGTERM, or SIGHUP's graceful reload, sets ``worker.alive`` to False; the arbiter SIGKILLs at
GRACEFUL_TIMEOUT) to the app's lifecycle (streamchat/lifecycle.py), which ends runs in time.
"""

from __future__ import annotations

import os

import gevent

# How often the watcher looks at worker.alive, and the time kept back before gunicorn's deadline
# for the `shutdown` events to be written and sent before the arbiter's SIGKILL.
POLL_SECONDS = 0.2
MAX_MARGIN_SECONDS = 1.0


def _services(worker):
    """Return the app's shared services (settings, store, lifecycle) from a gunicorn worker."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", None) or {}
    return extensions.get("streamchat")


def watch_for_shutdown(worker) -> None:
    """Start a greenlet that begins the app's shutdown as soon as gunicorn stops the worker."""
    services = _services(worker)
    if services is None:
        return
    graceful = float(worker.cfg.graceful_timeout)
    margin = min(MAX_MARGIN_SECONDS, graceful / 4)

    def watch() -> None:
        while worker.alive:
            gevent.sleep(POLL_SECONDS)
        services.lifecycle.begin_shutdown(graceful - POLL_SECONDS - margin)

    gevent.spawn(watch)


def exit_worker(worker) -> None:
    """In the exiting worker: wait for its producers (bounded), end the rest, close the store."""
    if worker.pid != os.getpid():
        return  # gunicorn also calls worker_exit in the arbiter, for a worker it reaped
    services = _services(worker)
    if services is None:
        return
    services.lifecycle.finish_shutdown()
    services.store.close()
