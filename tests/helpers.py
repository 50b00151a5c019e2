"""The tests' toolbox: shared data, a gunicorn in a child process, and a third-party SSE parser.

conftest.py holds only fixtures; what a test imports by name lives here (``from helpers import
make_store``), so a reader finds every helper in one file and a fixture never doubles as a library.

- ``FAST_DEMO``: settings that make the in-process app finish in milliseconds.
- ``SSE_VECTORS``: the encoder's tricky inputs with their exact bytes (the JS tests read the file too).
- ``SMALL_STORE`` and ``make_store()``: a memory run store with small limits.
- ``free_port()``: the benchmark's own (bench/processes.py), so tests and bench share one copy.
- ``GunicornProcess``: ``gunicorn`` run from the project root exactly as users run it.
- ``CANARY_KEY``, ``CANARY_PROMPT``, ``SERVICE_LOGS``, ``find_canaries()``: the whole-suite log scan. Every
  gunicorn given the key "fake" gets the canary key instead, every one leaves its logs in
  ``SERVICE_LOGS`` when it stops, and the session's end (tests/conftest.py) fails the run if a log
  holds the key or the prompt: the service logs neither, whatever a test makes it do.
- ``parse_sse()``, ``iter_events()``, ``answer_text()``, ``user()``: read SSE bodies with httpx-sse,
  not with our own parser, so a bug in ours cannot hide itself.
- ``tag()``: a unique tag for a fake upstream directive, so a test finds its own request.
- ``check_stop_closes_the_upstream()``: the stop scenario, the same whether nginx stands in front or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import EventSource

from bench.processes import die_with_parent, free_port
from bench.procfs import children_of
from fakeupstream import FakeUpstreamProcess, expected_text
from streamchat.runs import MemoryRunStore

__all__ = [
    "CANARY_KEY",
    "CANARY_PROMPT",
    "FAST_DEMO",
    "ROOT",
    "SERVICE_LOGS",
    "SMALL_STORE",
    "SSE_VECTORS",
    "GunicornProcess",
    "ServiceLog",
    "answer_text",
    "check_stop_closes_the_upstream",
    "find_canaries",
    "free_port",
    "iter_events",
    "make_store",
    "parse_sse",
    "require",
    "tag",
    "user",
]

ROOT = Path(__file__).resolve().parent.parent

# --- shared test data ------------------------------------------------------------------------------------
# Fast settings so in-process tests finish in milliseconds: the demo model streams at 2,000 tokens a
# second; the grace period is short so abandoned runs end quickly.
FAST_DEMO = {
    "model_provider": "demo",
    "demo_tokens_per_second": 2000.0,
    "demo_first_token_seconds": 0.0,
    "demo_jitter": 0.0,
    "heartbeat_seconds": 0.2,
    "disconnect_grace_seconds": 0.5,
    # The per-client limits off (tests of the limits turn them on): a test may start many runs at once.
    "rate_limit": "0",
    "max_runs_per_client": 0,
}

# The SSE byte vectors for the encoder's and the upstream decoder's tests (the JS tests read the file too).
SSE_VECTORS = json.loads((ROOT / "tests" / "vectors" / "sse_vectors.json").read_text())["vectors"]

# A run store's limits small enough for tests, and far from any test's timing.
SMALL_STORE = {"event_log_size": 100, "ttl_seconds": 60.0, "max_active_runs": 10, "grace_seconds": 60.0}


def make_store(**overrides) -> MemoryRunStore:
    """Return a memory run store with small limits (``overrides`` changes some)."""
    return MemoryRunStore(**{**SMALL_STORE, **overrides})


# --- the canaries: a key and a prompt that no service log may hold -----------------------------------------
# Fresh for each session, so that no file in the repository (or an old log) can hold them. The random
# part is what the scan looks for: a key logged without its "sk-" prefix, or a prompt quoted in part
# around it, is still found.
CANARY_KEY_MARK = secrets.token_hex(16)
CANARY_KEY = f"sk-canary-{CANARY_KEY_MARK}"
CANARY_PROMPT_MARK = secrets.token_hex(16)
CANARY_PROMPT = f"canary prompt {CANARY_PROMPT_MARK}: the heron flies at midnight over Lisbon"
# The key every test gives the openai provider when the fake upstream (which takes any key) is behind it.
PLACEHOLDER_KEY = "fake"


@dataclasses.dataclass(frozen=True)
class ServiceLog:
    """What one gunicorn wrote to its logs, and which test started it."""

    started_by: str
    canary_key: bool
    text: str


# Every GunicornProcess's logs, appended when it stops; tests/conftest.py scans them at the session's end.
SERVICE_LOGS: list[ServiceLog] = []


def find_canaries(text: str) -> list[str]:
    """Return the lines of ``text`` that hold a canary, each canary replaced by a marker."""
    # The whole canaries first, then their random parts wherever they stand alone.
    markers = {
        CANARY_KEY: "<CANARY KEY>",
        CANARY_PROMPT: "<CANARY PROMPT>",
        CANARY_KEY_MARK: "<CANARY KEY PART>",
        CANARY_PROMPT_MARK: "<CANARY PROMPT PART>",
    }
    found = []
    for line in text.split("\n"):
        if CANARY_KEY_MARK in line or CANARY_PROMPT_MARK in line:
            for canary, marker in markers.items():
                line = line.replace(canary, marker)
            found.append(line)
    return found


# --- gunicorn in a child process --------------------------------------------------------------------------


class GunicornProcess:
    """`gunicorn` run from the project root exactly as users run it, on a free loopback port."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = (), ready_path: str = "/") -> None:
        """Start it with ``env`` (and extra command-line ``args``), and wait until ``ready_path`` answers."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env = {**clean, "ACCESS_LOG": "", "RATE_LIMIT": "0", "MAX_RUNS_PER_CLIENT": "0", **env}
        # The placeholder key becomes the canary, so that the session's log scan can look for it.
        if env.get("OPENAI_API_KEY") == PLACEHOLDER_KEY:
            env["OPENAI_API_KEY"] = CANARY_KEY
        self.env = env
        self.started_by = os.environ.get("PYTEST_CURRENT_TEST", "(outside a test)")
        # The error log goes to a file: a pipe nobody reads would fill up and block the server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--graceful-timeout",
                "2",
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=die_with_parent,  # a test run that is killed leaves no gunicorn behind
        )
        self._wait_until_ready(ready_path)

    def _wait_until_ready(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"gunicorn exited: {self.error_log()}"
                self.stop()
                raise RuntimeError(message)
            try:
                with urllib.request.urlopen(f"{self.base_url}{path}", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # any answer says the worker has loaded the app (a 404 from an example, say)
            except OSError:  # refused, or the worker is still booting (URLError and timeouts are OSErrors)
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not start in time")

    def __enter__(self) -> GunicornProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop gunicorn with SIGINT (no graceful wait for open streams), then kill if need be."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.log.closed:  # a test may stop it before the fixture does
            self._keep_logs()
            self.log.close()

    def _keep_logs(self) -> None:
        """Append this server's error log (and its access log, if it wrote one) to SERVICE_LOGS."""
        text = self.error_log()
        access_log = self.env.get("ACCESS_LOG", "")
        if access_log not in ("", "-"):  # "-" is stdout, which goes nowhere here
            with contextlib.suppress(FileNotFoundError):  # not there: no request was logged
                text += Path(ROOT, access_log).read_text(errors="replace")
        canary_key = self.env.get("OPENAI_API_KEY") == CANARY_KEY
        SERVICE_LOGS.append(ServiceLog(self.started_by, canary_key, text))

    def error_log(self) -> str:
        """Return what gunicorn wrote to its error log so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


# --- SSE bodies, read with a third-party parser ------------------------------------------------------------


def worker_pids(master: int) -> list[int]:
    """Return the pids of a gunicorn master's workers (its children, from /proc), in order."""
    return sorted(children_of(master))


def parse_sse(body: bytes) -> list[dict]:
    """Parse a whole SSE body with httpx-sse; return [{"id", "event", "data"}] with data decoded."""
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    return list(iter_events(response))


def iter_events(response: httpx.Response) -> Iterator[dict]:
    """Yield {"id", "event", "data"} from an httpx response (streaming or not) as events arrive."""
    for sse in EventSource(response).iter_sse():
        # httpx-sse also yields the bare `retry:` block, which the spec does not dispatch.
        if sse.data:
            yield {"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)}


def answer_text(events: list[dict]) -> str:
    """Join the text of the token events."""
    return "".join(e["data"]["text"] for e in events if e["event"] == "token")


def require(missing: str | None) -> None:
    """Skip a test whose tool is missing here (``missing`` says which); fail instead when CI is set.

    .ci/run installs every tool the tests need, so in CI a missing one is a broken install.
    """
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


def tag() -> str:
    """Return a unique tag, so a test finds its own request among the fake upstream's records."""
    return uuid.uuid4().hex[:12]


def user(content: str) -> dict:
    """Return a one-message conversation body."""
    return {"messages": [{"role": "user", "content": content}]}


# --- scenarios that more than one module runs -------------------------------------------------------------


def check_stop_closes_the_upstream(base_url: str, fake_upstream: FakeUpstreamProcess) -> None:
    """Start a run at ``base_url``, stop it after three tokens; check that the upstream closed within 1 s."""
    # The fake upstream has 25 s of tokens to send (500 at 20 a second): only the stop ends them early.
    label = tag()
    with httpx.Client(timeout=30) as client:
        body = user(f"long [fake tokens=500 tps=20 tag={label}]")
        created = client.post(f"{base_url}/runs", json=body).json()
        with client.stream("GET", f"{base_url}{created['stream_url']}") as response:
            events = iter_events(response)
            seen = [next(events) for _ in range(4)]  # start and three tokens
            stop = client.post(f"{base_url}{created['stop_url']}")
            stopped_at = time.time()
            seen.extend(events)
        status = client.get(f"{base_url}/runs/{created['id']}").json()
    # helpers.py is not rewritten by pytest, so each assert says what it saw.
    assert stop.status_code == 202, stop.text
    assert seen[-1]["event"] == "done" and seen[-1]["data"] == {"finish_reason": "stopped"}, seen[-1]
    assert expected_text(500).startswith(answer_text(seen)), answer_text(seen)
    record = fake_upstream.wait_for_outcome(label)
    assert record["outcome"] == "client_closed", record
    closed_after = record["closed_by_client_at"] - stopped_at
    assert closed_after < 1.0, f"the upstream closed {closed_after:.3f} s after the stop"
    assert (status["state"], status["finish_reason"]) == ("stopped", "stopped"), status
