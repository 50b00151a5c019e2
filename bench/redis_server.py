"""The redis-server of ``python -m bench.run --store redis``: started, read, and always stopped.

Where it sits: bench/run.py starts one for the whole run, before the first step, and hands its URL
to the app's Redis-store phases (``REDIS_URL``); the memory-store phases never see it. Debian's
``/usr/bin/redis-server`` with no persistence (``--save ''``, no AOF), a temporary data dir of its
own, a free loopback port, pinned with ``taskset`` to the harness core (where the fake upstream and
the load generator run), so that the relay's core measures the relay alone. It runs as a
``Child``: its own process group, killed with the benchmark whatever happens (bench/processes.py).

What the benchmark reads from it, and what each figure counts:

- its CPU, from /proc like the relay's: the load generator watches its pid (``--watch redis=PID``);
- ``INFO commandstats`` before and after a phase: every command Redis ran, by name. Commands that
  the store's Lua scripts run inside Redis (XADD, HMGET, PEXPIRE in redis_lua.APPEND) are counted
  too, so "commands" is the work Redis did, not what crossed the network; EVALSHA alone counts the
  scripts called (one per pipelined write, for all of its runs);
- ``INFO stats`` ``total_reads_processed`` before and after: how many times Redis read a client's
  socket. A round trip (one command, or one pipeline) arrives in one read, unless it is larger than
  Redis's 16 KB read buffer, and a closing connection costs one more read: so this is a close upper
  bound of the round trips, counted on the server since the relay is another process. The
  harness's own reads (its INFO calls) are taken off;
- ``connected_clients``, sampled while the load runs (the harness's own connection taken off), and
  each worker's own connections to Redis, counted from /proc (bench/procfs.connections_to).

Try it::

    python -c "import bench.redis_server as b; r = b.RedisServer(None); print(r.counters()); r.stop()"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from bench.processes import Child, free_port, pinned
from bench.procfs import connections_to, rss_kb

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def missing() -> str | None:
    """Say what ``--store redis`` needs that is not installed here, or None."""
    if not os.path.exists(REDIS_SERVER):
        return "redis-server is not installed (apt-get install redis-server)"
    return None


def version() -> str | None:
    """Return what ``redis-server --version`` prints, or None without it."""
    if missing():
        return None
    return subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.strip()


def server_argv(port: int, data_dir: str) -> list[str]:
    """Return the command line of a loopback redis-server with no persistence (tests use it too)."""
    return [
        REDIS_SERVER,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", data_dir,
        "--maxclients", "10000",
        "--loglevel", "warning",
    ]  # fmt: skip


class RedisServer:
    """One redis-server on 127.0.0.1, pinned to ``core``; ``stop()`` kills it and removes its data dir."""

    def __init__(self, core: int | str | None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        argv = server_argv(self.port, self.dir)
        out = subprocess.DEVNULL if log is None else log.open("wb")
        self.child = Child("redis-server", pinned(argv, core), stdout=out, stderr=out)
        if log is not None:
            out.close()  # the child has its own copy of the descriptor
        self.pid = self.child.pid  # taskset execs redis-server in place: the same pid
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        self.own_reads = 0  # reads that the harness caused, taken off the round trips
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the server answers PING; stop it and raise if it does not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.child.process.poll() is not None:
                break
            try:
                self.client.ping()
                self.own_reads += 1
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def flush(self) -> None:
        """Forget every key, so that a fresh relay starts from an empty Redis."""
        self.client.flushall()
        self.own_reads += 1

    def counters(self) -> dict:
        """Read the cumulative counters that a phase's figures are deltas of (one round trip)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.info("commandstats")
            pipe.info("stats")
            commandstats, stats = pipe.execute()
        self.own_reads += 1
        return {
            "commands": {
                name.removeprefix("cmdstat_"): values["calls"] for name, values in commandstats.items()
            },
            "reads": stats["total_reads_processed"],
            "own_reads": self.own_reads,
        }

    def sample(self, workers: list[int]) -> tuple[int, dict[int, int | None]]:
        """Return the clients connected now (the harness's own taken off) and each worker's own."""
        clients = self.client.info("clients")["connected_clients"] - 1
        self.own_reads += 1
        return clients, connections_to(workers, self.port)

    def rss_kb(self) -> int | None:
        """Return the server's RSS in KiB."""
        return rss_kb(self.pid)

    def stop(self) -> None:
        """Kill the server, wait for it, and remove its data dir."""
        self.client.close()
        self.child.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
