"""A real ``redis-server`` (Debian's package) in a child process, on a free loopback port.

The command line is the benchmark's (bench/redis_server.py), so tests and bench run the same server.

Used by tests/test_redis.py's fixtures. No persistence (``--save ''``, no AOF): a restart is a Redis
that lost everything, the harshest case for the store. Its data dir is a temporary folder of its own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import redis
from helpers import require

from bench import redis_server
from bench.processes import die_with_parent, free_port
from bench.redis_server import server_argv


def require_redis_server() -> None:
    """Skip without redis-server, or fail when CI is set (CI installs it: .ci/run)."""
    require(redis_server.missing())


class RedisProcess:
    """``redis-server`` on 127.0.0.1, started at once; ``stop()`` and ``start()`` again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="streamchat-redis-")
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start the server (again) and wait until it answers PING."""
        self.process = subprocess.Popen(
            server_argv(self.port, self.dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # a test run that is killed leaves no redis-server behind
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)  # refused, or not ready yet (a Redis still loading answers -LOADING)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def stop(self) -> None:
        """Kill the server at once (SIGKILL: as if it crashed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Stop the server and remove its data dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        """Return a client of the test's own (not counted as a worker's)."""
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def clients_by_name(self) -> list[dict]:
        """Return CLIENT LIST as dicts, without the caller's own connection."""
        with self.client() as own:
            me = own.client_id()
            return [client for client in own.client_list() if int(client["id"]) != me]
