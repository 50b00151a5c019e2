"""Shared pytest fixtures: servers on 127.0.0.1 that tests talk to over real sockets.

Each fixture starts what it needs and always stops it, so no process outlives the test run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import create_app
from streamchat.fake_upstream import FakeUpstreamProcess
from streamchat.runs import MemoryRunStore

ROOT = Path(__file__).resolve().parent.parent

# --- the app in-process (Flask's test client, demo model) -----------------------------------------------
# Fast settings so in-process tests finish in milliseconds: the demo model streams at 2,000 tokens a
# second; the grace period is short so abandoned runs end quickly.
FAST_DEMO = {
    "model_provider": "demo",
    "demo_tokens_per_second": 2000.0,
    "demo_first_token_seconds": 0.0,
    "demo_jitter": 0.0,
    "heartbeat_seconds": 0.2,
    "disconnect_grace_seconds": 0.5,
}


@pytest.fixture
def app():
    """The Flask app with the fast demo model."""
    return create_app(FAST_DEMO)


@pytest.fixture
def client(app):
    """A test client for the app."""
    return app.test_client()


# --- shared test data ------------------------------------------------------------------------------------
# The SSE byte vectors for the encoder's and the upstream decoder's tests (the JS tests read the file too).
SSE_VECTORS = json.loads((Path(__file__).parent / "vectors" / "sse_vectors.json").read_text())["vectors"]
# A run store's limits small enough for tests, and far from any test's timing.
SMALL_STORE = {"event_log_size": 100, "ttl_seconds": 60.0, "max_active_runs": 10, "grace_seconds": 60.0}


def make_store(**overrides) -> MemoryRunStore:
    """A memory run store with small limits (``overrides`` changes some)."""
    return MemoryRunStore(**{**SMALL_STORE, **overrides})


# --- gunicorn in a child process --------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GunicornProcess:
    """`gunicorn` run from the project root exactly as users run it, on a free loopback port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        # The error log goes to a file: a pipe nobody reads would fill up and block the server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "2"],
            cwd=ROOT,
            env={**clean, "ACCESS_LOG": "", **env},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self._wait_until_ready()

    def _wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"gunicorn exited: {self.error_log()}"
                self.stop()
                raise RuntimeError(message)
            try:
                with urllib.request.urlopen(f"{self.base_url}/", timeout=2):
                    return
            except OSError:  # refused, or the worker is still booting (URLError and timeouts are OSErrors)
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not start in time")

    def __enter__(self) -> "GunicornProcess":
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
        self.log.close()

    def error_log(self) -> str:
        """Return what gunicorn wrote to its error log so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@pytest.fixture(scope="session")
def demo_server() -> Iterator[GunicornProcess]:
    """gunicorn with the demo model at 200 tokens a second, short heartbeat and grace period."""
    with GunicornProcess(
        {
            "DEMO_TOKENS_PER_SECOND": "200",
            "DEMO_FIRST_TOKEN_SECONDS": "0.05",
            "HEARTBEAT_SECONDS": "0.5",
            "DISCONNECT_GRACE_SECONDS": "1",
        }
    ) as server:
        yield server


@pytest.fixture(scope="session")
def openai_server(fake_upstream) -> Iterator[GunicornProcess]:
    """gunicorn with the openai provider pointed at the fake upstream, with short clocks."""
    with GunicornProcess(
        {
            "OPENAI_BASE_URL": fake_upstream.base_url,
            "OPENAI_API_KEY": "fake",
            "HEARTBEAT_SECONDS": "0.5",
            "DISCONNECT_GRACE_SECONDS": "1",
            "FIRST_TOKEN_TIMEOUT_SECONDS": "4",
            "STALL_TIMEOUT_SECONDS": "1",
        }
    ) as server:
        yield server


# --- fake upstream (streamchat/fake_upstream.py) --------------------------------------------------------
# One fake OpenAI-compatible server for the whole session, fast by default (8 tokens at 500 per second,
# no wait for the first). Tests that need more put a "[fake ...]" directive in the last user message,
# with a tag of their own so that they find their request in `fake_upstream.requests(tag)`.


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstreamProcess]:
    """Run the fake OpenAI-compatible upstream in a child process for the whole session."""
    with FakeUpstreamProcess(
        "--tokens", "8", "--tokens-per-second", "500", "--first-token-seconds", "0"
    ) as up:
        yield up


# --- the page in a real browser (tests/test_page.py) -----------------------------------------------------
# Debian's Chromium (apt-get install chromium) driven by Playwright (pip install playwright), never a
# browser that Playwright downloads. Without either, the page tests skip, or fail when CI is set.

CHROMIUM = Path("/usr/bin/chromium")
# Headless (Playwright's default) with a fresh profile (also its default); the rest keeps Chromium from
# calling home, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def page_server() -> Iterator[GunicornProcess]:
    """gunicorn with a steady demo model (200 tokens a second, no jitter) and quick reconnects."""
    with GunicornProcess(
        {
            "DEMO_TOKENS_PER_SECOND": "200",
            "DEMO_FIRST_TOKEN_SECONDS": "0.05",
            "DEMO_JITTER": "0",
            "HEARTBEAT_SECONDS": "0.3",
            "DISCONNECT_GRACE_SECONDS": "2",
            "SSE_RETRY_MILLISECONDS": "200",
        }
    ) as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium under Playwright, for the whole session."""
    import importlib.util

    missing = None
    if importlib.util.find_spec("playwright") is None:
        missing = "the playwright package is missing: pip install playwright (never `playwright install`)"
    elif not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing: apt-get install chromium"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
