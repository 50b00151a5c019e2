"""Start and always stop what the benchmark measures: the fake upstream, the relays, the load generator.

Used by bench/run.py. Every child runs in its own process group, so that stopping it also stops
what it started (gunicorn's worker), and is told by the kernel to die if the benchmark itself dies
(``PR_SET_PDEATHSIG``), so that no stray server outlives a run, even one that was killed.

The two relays run under the same gunicorn settings (gunicorn.conf.py: one gevent worker); only the
WSGI app differs: ``wsgi:app`` (this project) or ``bench.naive_relay:app`` (the baseline).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.procfs import children_of, cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
RELAYS = {"app": "wsgi:app", "naive": "bench.naive_relay:app"}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask for SIGKILL when the benchmark process ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """A child process in its own process group; ``stop()`` ends the whole group."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, **popen) -> None:
        self.name = name
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, start_new_session=True, preexec_fn=_die_with_parent, **popen
        )
        self.pid = self.process.pid

    def stop(self, signum: int = signal.SIGINT, timeout: float = 5.0) -> None:
        """Signal the group, wait up to ``timeout``, then SIGKILL whatever is left of it."""
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signum)
                self.process.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # the worker too, if the master left it behind
        self.process.wait()


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pinned(argv: list[str], core: int | None) -> list[str]:
    """Prefix a command with ``taskset -c CORE`` when a core is given."""
    return argv if core is None else ["taskset", "-c", str(core), *argv]


def start_upstream() -> tuple[Child, str]:
    """Start the fake upstream on a free port; return it and its root URL."""
    child = Child(
        "fake upstream",
        [sys.executable, "-m", "streamchat.fake_upstream", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
    )
    ready, _, _ = select.select([child.process.stdout], [], [], 15)
    line = child.process.stdout.readline().decode() if ready else ""
    match = re.fullmatch(r"fake upstream listening on (http://127\.0\.0\.1:\d+)/v1\n", line)
    if match is None:
        child.stop()
        raise RuntimeError(f"the fake upstream did not start: {line!r}")
    return child, match[1]


class Relay:
    """One relay under gunicorn (one gevent worker), pinned to a core, warmed up, ready to measure."""

    def __init__(self, kind: str, upstream_url: str, *, heartbeat: float, core: int | None, log: Path):
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env.update(
            OPENAI_BASE_URL=f"{upstream_url}/v1",
            OPENAI_API_KEY="fake",
            HEARTBEAT_SECONDS=f"{heartbeat:g}",
            ACCESS_LOG="",  # one log line per stream would be measured as relay cost
            LOG_LEVEL="warning",
            WEB_CONCURRENCY="1",
        )
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--graceful-timeout",
            "2",
        ]
        if kind == "naive":
            # The same gunicorn.conf.py is read; these flags only make the baseline's setup explicit.
            argv += ["-k", "gevent", "-w", "1", "--no-control-socket", RELAYS["naive"]]
        self._log = log.open("wb")
        self.child = Child(f"{kind} relay", pinned(argv, core), env=env, stdout=self._log, stderr=self._log)
        self.worker = 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the worker to boot and serve three short streams (the SDK client is lazy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.child.process.poll() is not None:
                raise RuntimeError(f"the {self.kind} relay exited; see {self._log.name}")
            workers = children_of(self.child.pid)
            if len(workers) == 1 and self._stream_once():
                self.worker = workers[0]
                for _ in range(2):
                    self._stream_once()
                return
            time.sleep(0.1)
        raise RuntimeError(f"the {self.kind} relay did not start in {timeout:g} s; see {self._log.name}")

    def _stream_once(self) -> bool:
        """Send one tiny stream through the relay; True if it answered 200 with a whole body."""
        body = json.dumps(
            {"messages": [{"role": "user", "content": "warm up [fake tokens=3 tps=1000 ttft=0]"}]}
        )
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", "/stream", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read()
        except OSError:
            return False
        finally:
            connection.close()
        return response.status == 200 and (b"event: done" in text or b"[DONE]" in text)

    def stop(self) -> None:
        """Kill gunicorn and its worker: the measurement is over, and nothing in them is kept."""
        self.child.stop(signal.SIGKILL)
        self._log.close()


def wait_idle(pid: int, *, below: float = 0.05, timeout: float = 15.0) -> float:
    """Wait until a process uses less than ``below`` of a core; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = cpu_seconds(pid) or 0.0
        time.sleep(0.3)
        if ((cpu_seconds(pid) or 0.0) - before) / 0.3 < below:
            break
    return time.monotonic() - start
