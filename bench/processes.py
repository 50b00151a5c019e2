"""Start and always stop what the benchmark measures: the fake upstream, the relays, the load generator.

Used by bench/run.py. Every child runs in its own process group, so that stopping it also stops
what it started (gunicorn's worker), and is told by the kernel to die if the benchmark itself dies
(``PR_SET_PDEATHSIG``), so that no stray server outlives a run, even one that was killed.

The app and the baseline run under the same gunicorn settings (gunicorn.conf.py: one gevent worker);
only the WSGI app differs: ``wsgi:app`` (this project) or ``examples.step1_relay:app`` (the baseline,
the tutorial's first step). With ``--store redis`` the app runs a second time with ``REDIS_URL`` set
(the ``redis`` phase: its Redis run store), with ``--workers N`` workers.
Every relay runs with the app's per-client limits off (``RATE_LIMIT=0``, ``MAX_RUNS_PER_CLIENT=0``):
the load generator is one client with thousands of streams. The start-cost step (bench/start_cost.py)
also runs the app as ``app+limits``: the same app with those limits on, set high enough
(``LIMITS_HIGH``) that the load generator is never refused, to measure what checking them costs.
The anchors (bench/anchors/) run as their tutorials run them: the Flask one under the same gunicorn,
the FastAPI one under uvicorn, the Node one under node; each is one process on the relay's core.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procfs import children_of, cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
NODE_ANCHOR = ROOT / "bench" / "anchors" / "node"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RelayKind:
    """One kind of relay: what it is, how to start it, and how the load generator reads it."""

    what: str  # one line for the output
    server: str  # "gunicorn", "uvicorn" or "node"
    target: str  # the WSGI or ASGI app, or the script
    mode: str  # how the load generator reads it (bench/loadgen.py)
    env: dict[str, str] = field(default_factory=dict)  # set over LIMITS_OFF in its environment

    def argv(self, port: int) -> list[str]:
        """Return the command that serves this relay on 127.0.0.1:PORT."""
        if self.server == "gunicorn":
            # The same gunicorn.conf.py is read by all; for the baselines, the flags make it explicit.
            flags = [] if self.target == "wsgi:app" else ["-k", "gevent", "-w", "1", "--no-control-socket"]
            bind = ["--bind", f"127.0.0.1:{port}", "--graceful-timeout", "2"]
            return [sys.executable, "-m", "gunicorn", *bind, *flags, self.target]
        if self.server == "uvicorn":
            return [
                sys.executable, "-m", "uvicorn", self.target, "--host", "127.0.0.1", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
            ]  # fmt: skip
        return ["node", self.target]  # reads PORT from the environment

    def missing(self) -> str | None:
        """Say what this relay needs that is not installed here, or None."""
        if self.server == "uvicorn":
            for module in ("fastapi", "uvicorn", "uvloop", "httptools"):
                if importlib.util.find_spec(module) is None:
                    return f"{module} is not installed (pip install -r requirements.txt)"
        if self.server == "node":
            version = node_version()
            if version is None:
                return "node is not on the PATH"
            major = re.match(r"v(\d+)\.", version)
            if major is None or int(major[1]) < 20:
                return f"the openai npm package needs Node.js 20 or later, this node is {version!r}"
            if not (NODE_ANCHOR / "node_modules" / "openai").is_dir():
                return "the openai npm package is not installed (npm ci --prefix bench/anchors/node)"
        return None


# The app first, then the baseline, then the anchors: every table and loop keeps this order.
RELAYS = {
    "app": RelayKind("this app", "gunicorn", "wsgi:app", "app"),
    "naive": RelayKind(
        "naive baseline: Flask + SDK typed chunks", "gunicorn", "examples.step1_relay:app", "naive"
    ),
    "lines": RelayKind(
        "anchor: Flask + httpx lines + json.loads", "gunicorn", "bench.anchors.lines_relay:app", "naive"
    ),
    "fastapi": RelayKind(
        "anchor: FastAPI + AsyncOpenAI on uvicorn (uvloop)",
        "uvicorn",
        "bench.anchors.fastapi_relay:app",
        "naive",
    ),
    "node": RelayKind("anchor: Node http + openai npm", "node", str(NODE_ANCHOR / "relay.mjs"), "naive"),
}
DEFAULT_RELAYS = ("app", "naive")
# The app with its Redis run store: not a relay of its own (``--relays`` does not list it), a phase
# that ``--store redis`` adds right after the app's, measured beside it.
REDIS_PHASE = RelayKind("this app, Redis run store", "gunicorn", "wsgi:app", "app")
# The app's settings that the benchmark sets in every relay's environment (unknown names are ignored).
LIMITS_OFF = {"RATE_LIMIT": "0", "MAX_RUNS_PER_CLIENT": "0"}
# The app with its per-client limits on (the start-cost step's ``app+limits`` phase): every check
# runs, but the limits are far above what one load generator starts in a minute or holds at once.
LIMITS_HIGH = {"RATE_LIMIT": "1000000/minute", "MAX_RUNS_PER_CLIENT": "100000"}
LIMITS_PHASE = RelayKind("this app, per-client limits on", "gunicorn", "wsgi:app", "app", LIMITS_HIGH)


def relay_kind(name: str) -> RelayKind:
    """Return the relay kind of a phase name: one of RELAYS, "redis" or "app+limits"."""
    return {**RELAYS, "redis": REDIS_PHASE, "app+limits": LIMITS_PHASE}[name]


def node_version() -> str | None:
    """Return what ``node --version`` prints (like "v20.20.2"), or None without node on the PATH."""
    node = shutil.which("node")
    return (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else None
    )


def die_with_parent() -> None:
    """In the child, before exec: ask for SIGKILL when the process that started it ends.

    Used as ``preexec_fn``: a benchmark or a test run that is itself killed leaves no server behind.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """A child process in its own process group; ``stop()`` ends the whole group."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, **popen) -> None:
        self.name = name
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, start_new_session=True, preexec_fn=die_with_parent, **popen
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


def pinned(argv: list[str], core: int | str | None) -> list[str]:
    """Prefix a command with ``taskset -c CORE`` when a core (or a list, like "0,1") is given."""
    return argv if core is None else ["taskset", "-c", str(core), *argv]


def start_upstream() -> tuple[Child, str]:
    """Start the fake upstream on a free port; return it and its root URL."""
    child = Child(
        "fake upstream",
        [sys.executable, "-m", "fakeupstream", "--host", "127.0.0.1", "--port", "0"],
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
    """One relay's server (gunicorn with its workers, uvicorn or node), pinned to its cores, warmed up.

    ``redis_url`` (the ``redis`` phase only) gives the app its Redis run store, and ``workers`` more
    than one gunicorn worker; every other relay runs one worker and never sees a REDIS_URL, even one
    set in the benchmark's own environment. Its kind's ``env`` overrides the relay's environment
    last (the ``app+limits`` phase turns the per-client limits back on with it: LIMITS_PHASE).
    """

    def __init__(
        self,
        kind: str,
        upstream_url: str,
        *,
        heartbeat: float,
        core: int | str | None,
        log: Path,
        redis_url: str = "",
        workers: int = 1,
    ):
        self.kind = kind
        self.expected_workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OPENAI_") and k not in ("REDIS_URL", "WEB_CONCURRENCY")
        }
        environment.update(
            OPENAI_BASE_URL=f"{upstream_url}/v1",
            OPENAI_API_KEY="fake",
            HEARTBEAT_SECONDS=f"{heartbeat:g}",
            # The app refuses a send timeout not above the heartbeat (a quiet stream is not stuck).
            SEND_TIMEOUT_SECONDS=f"{max(60.0, 2 * heartbeat):g}",
            ACCESS_LOG="",  # one log line per stream would be measured as relay cost
            LOG_LEVEL="warning",
            WEB_CONCURRENCY=str(workers),
            PORT=str(self.port),  # the Node anchor's; the others are given it on their command line
            **LIMITS_OFF,
        )
        if redis_url:
            environment["REDIS_URL"] = redis_url
        environment.update(relay_kind(kind).env)
        self._log = log.open("wb")
        argv = pinned(relay_kind(kind).argv(self.port), core)
        self.child = Child(f"{kind} relay", argv, env=environment, stdout=self._log, stderr=self._log)
        self.worker = 0  # the first worker: the one profiled
        self.workers: list[int] = []

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the workers to boot and serve three short streams each (the SDK client is lazy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.child.process.poll() is not None:
                raise RuntimeError(f"the {self.kind} relay exited; see {self._log.name}")
            # gunicorn serves from its worker processes; uvicorn and node from themselves.
            workers = (
                children_of(self.child.pid)
                if relay_kind(self.kind).server == "gunicorn"
                else [self.child.pid]
            )
            if len(workers) == self.expected_workers and self._stream_once():
                self.workers = sorted(workers)
                self.worker = self.workers[0]
                for _ in range(3 * len(workers) - 1):
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
        """Stop the server at once: the measurement is over, and nothing in it is kept.

        SIGINT, gunicorn's quick shutdown, and not SIGKILL: the master then removes, as it exits,
        the metrics directory it made, which a killed master would leave in the temporary directory.
        Whatever has not exited within a few seconds is killed all the same.
        """
        self.child.stop(signal.SIGINT, timeout=5.0)
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
