"""gunicorn's worker hooks, as plain functions that gunicorn.conf.py calls.

Where it sits: gunicorn.conf.py's ``post_worker_init`` calls ``presize_file_table`` and starts
``watch_for_shutdown`` in each worker, and ``worker_exit`` calls ``exit_worker``. The last two
connect gunicorn's way of stopping a worker (SIGTERM, or SIGHUP's graceful reload, sets
``worker.alive`` to False; the arbiter SIGKILLs at GRACEFUL_TIMEOUT) to the app's lifecycle
(streamchat/lifecycle.py), which ends runs in time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource

import gevent

# How often the watcher looks at worker.alive, and the time kept back before gunicorn's deadline
# for the `shutdown` events to be written and sent before the arbiter's SIGKILL.
POLL_SECONDS = 0.2
MAX_MARGIN_SECONDS = 1.0


# Descriptors a worker needs besides two per connection: listeners, logs, Redis, the metrics' files.
SPARE_DESCRIPTORS = 64


def presize_file_table(connections: int) -> int:
    """Grow this process's table of file descriptors now, once, to fit ``connections`` streams.

    Why: the kernel grows a process's descriptor table by doubling it when a new descriptor does
    not fit (past 64, 128, 256, ... open files), and in a process that has more than one thread
    (gevent's resolver runs getaddrinfo in a thread pool) each growth first waits for an RCU grace
    period, during which the worker and every stream in it stand still: 10 to 31 ms per growth on
    the benchmark's VM. A stream holds two descriptors (its client's and its upstream's), so a worker
    going from 0 to 400 streams stood still four times, each time adding that wait to every first
    token in flight (docs/performance.md). Grown once before the first request, the table never
    grows again below the size asked for; it is never shrunk (8 bytes of kernel memory per slot).

    Asks for two descriptors per connection and SPARE_DESCRIPTORS, capped at the open-file limit.
    Returns how many descriptors it made room for (0 if it left the table as it was).
    """
    soft_limit, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(2 * connections + SPARE_DESCRIPTORS, soft_limit)
    if wanted <= SPARE_DESCRIPTORS:
        return 0
    # F_DUPFD takes the lowest free descriptor at or above wanted - 1: the table grows to hold it,
    # and no descriptor in use is touched (dup2 onto a number in use would close it).
    with open(os.devnull, "rb") as placeholder:
        try:
            high = fcntl.fcntl(placeholder.fileno(), fcntl.F_DUPFD, wanted - 1)
        except OSError:  # every slot up there is taken, or the limit is lower than it said
            return 0
        with contextlib.suppress(OSError):
            os.close(high)
    return wanted


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
