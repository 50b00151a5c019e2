"""gunicorn settings: plain Python, read by a bare ``gunicorn`` in this folder.

Every knob can be overridden from the environment (the names below), and command-line flags win
over this file: ``gunicorn --bind 127.0.0.1:9000``.
"""

import atexit
import gc
import os
import shutil
import sys
import tempfile


def _refuse(message):
    """Refuse to start in one line, the last thing printed, with exit status 2 (before any worker)."""
    print(f"streamchat: refusing to start: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _whole_number(name, default, minimum):
    """Read a whole number of at least ``minimum`` from the environment (empty: the default)."""
    raw = os.environ.get(name) or default
    try:
        value = int(raw)
    except ValueError:
        _refuse(f"{name} must be a whole number, got {raw!r}")
    if value < minimum:
        _refuse(f"{name} must be at least {minimum}, got {value}")
    return value


# --- What to serve, and where ----------------------------------------------------------------------
wsgi_app = "wsgi:app"
# Loopback by default; put nginx in front for the outside world (docs/deployment.md).
bind = os.environ.get("BIND", "127.0.0.1:8000")

# --- Workers -----------------------------------------------------------------------------------------
# gevent: each open stream is a greenlet, not a thread, so one process holds thousands of streams.
worker_class = "gevent"
# One worker by default, with runs in the worker's memory. More workers (-w N, WEB_CONCURRENCY=N) need
# REDIS_URL, so that every worker sees every run; on_starting below refuses them without it.
workers = _whole_number("WEB_CONCURRENCY", "1", minimum=1)
# Open streams per worker. Each stream also holds an upstream connection, so keep the open-file
# limit (ulimit -n) above twice this.
worker_connections = _whole_number("WORKER_CONNECTIONS", "10000", minimum=1)

# --- Time --------------------------------------------------------------------------------------------
# For gevent workers this is the heartbeat between worker and arbiter, not a per-request limit:
# streams may last far longer.
timeout = _whole_number("GUNICORN_TIMEOUT", "30", minimum=1)
# On SIGTERM (and on SIGHUP's reload, for the old workers), live runs get this long to finish; those
# still live shortly before it end with `fail` `shutdown` (streamchat/lifecycle.py).
graceful_timeout = _whole_number("GRACEFUL_TIMEOUT", "10", minimum=0)
# Keep-alive between requests on one connection (the page's several requests, or nginx's upstream pool).
keepalive = _whole_number("KEEPALIVE_SECONDS", "5", minimum=0)

# --- Operations ----------------------------------------------------------------------------------------
# No shared control socket: several instances (tests, benchmarks) can run side by side.
control_socket_disable = True
# "-" is standard output; set ACCESS_LOG to empty to turn the access log off.
accesslog = os.environ.get("ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL") or "info"
if loglevel.lower() not in ("debug", "info", "warning", "error", "critical"):
    _refuse(f"LOG_LEVEL must be debug, info, warning, error or critical, got {loglevel!r}")

# --- gevent ------------------------------------------------------------------------------------------
# gevent records where every greenlet was spawned (ten stack frames, for debugging tools), and each
# stream spawns two: the connection's and its run's producer. Nothing here reads that record, and
# without it an open stream costs about 2 KB less (the soak in docs/performance.md). gevent's
# own variable decides: GEVENT_TRACK_GREENLET_TREE=true records it again. Set here, before the
# workers fork; gevent reads it when the first greenlet is spawned.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "false")

# --- Garbage collection ----------------------------------------------------------------------------
# Python's cyclic garbage collector stops the whole worker, every stream in it, while it runs. With
# many streams' objects in the heap, the default thresholds (700, 10, 10) made that long and often:
# in the benchmark, the p99 of the time to first token added at 100 streams was 90 ms with them and
# 33 ms with these (the commands are in docs/performance.md). Reference counting still frees at
# once everything that is not a cycle; only cycles wait longer to be collected.
_gc_threshold = os.environ.get("GC_THRESHOLD") or "100000,50,100"
try:
    _GC_THRESHOLDS = tuple(int(part) for part in _gc_threshold.split(","))
    if len(_GC_THRESHOLDS) != 3 or min(_GC_THRESHOLDS) < 1:
        raise ValueError
except ValueError:
    _refuse(f"GC_THRESHOLD must be three integers like 100000,50,100, got {_gc_threshold!r}")


# --- Hooks ------------------------------------------------------------------------------------------------


def on_starting(server):
    """In the master, once: refuse a setup that cannot work in one last line, else say what serves."""
    from streamchat.config import Settings
    from streamchat.startup import check_startup

    try:
        line = check_startup(
            Settings.from_env(),
            workers=server.cfg.workers,
            binds=list(server.cfg.bind),
            preload=server.cfg.preload_app,
        )
    except ValueError as err:  # a bad setting, or a refused combination (StartupRefused)
        _refuse(err)
    server.log.info(line)
    # Prometheus's multiprocess mode (streamchat/metrics.py): each worker writes its metrics to files
    # in this directory, and the worker that answers GET /metrics adds them all up. One fresh, empty
    # directory per master, made here and not at the top of this file: a SIGHUP re-reads this file
    # while the workers keep writing where they were, and tests run several gunicorns side by side. It
    # is set before any worker is forked, so before a worker imports prometheus_client (which reads
    # it once). A value inherited from outside is replaced: a directory shared by two masters, or kept
    # from an earlier run, would mix their counts.
    metrics_dir = tempfile.mkdtemp(prefix="streamchat-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # Removed when this master exits, however it exits: a stop, or a start that fails after this
    # point (a port already in use), which never reaches gunicorn's on_exit hook.
    atexit.register(_remove_metrics_dir, metrics_dir, os.getpid())


def _remove_metrics_dir(metrics_dir, master_pid):
    """At the master's exit, remove its metrics directory; a worker inherits the hook, and skips it."""
    if os.getpid() == master_pid:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def post_worker_init(worker):
    """In each worker, once it has started: GC thresholds, the descriptor table grown once for every
    connection the worker may hold (the reason is in streamchat/worker_hooks.py), and the watch for
    gunicorn stopping it."""
    from streamchat.worker_hooks import presize_file_table, watch_for_shutdown

    gc.set_threshold(*_GC_THRESHOLDS)
    presize_file_table(worker.cfg.worker_connections)
    watch_for_shutdown(worker)


def worker_exit(server, worker):
    """In each exiting worker: let its runs finish or end them with `shutdown`, then close the store."""
    from streamchat.worker_hooks import exit_worker

    exit_worker(worker)


def child_exit(server, worker):
    """In the master, after a worker has exited: drop its live gauges, as prometheus-client says."""
    from prometheus_client import multiprocess

    # Its counters and histograms stay (what it counted happened); its gauges (active runs and
    # readers, mode livesum) must not count a dead process's runs as live.
    multiprocess.mark_process_dead(worker.pid)
