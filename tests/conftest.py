"""Shared pytest fixtures, and the markers that keep the inner loop fast.

Fixtures start what a test needs on 127.0.0.1 (the app in-process, gunicorn, the fake upstream, a
headless Chromium) and always stop it, so no process outlives the test run. What tests import by name
(``GunicornProcess``, ``make_store``, ``SSE_VECTORS``...) lives in tests/helpers.py, not here.

Markers are put on by ``pytest_collection_modifyitems`` below, from what a test uses, so that no test
has to remember them: a test that asks for the ``browser`` fixture is a ``browser`` test, and so on.
The inner loop leaves the heavy ones out (about a minute on a 2-core machine)::

    python -m pytest -m "not browser and not bench and not redis and not nginx and not slow"

The log canary: each session server is sent the canary prompt (``send_canary_runs``), every gunicorn
the tests start keeps its logs in ``SERVICE_LOGS`` (tests/helpers.py), and ``pytest_sessionfinish``
fails the run if any of them holds the canary key or the canary prompt, printing the lines.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import (
    CANARY_PROMPT,
    FAST_DEMO,
    SERVICE_LOGS,
    GunicornProcess,
    find_canaries,
    parse_sse,
    require,
)

from app import create_app
from fakeupstream import FakeUpstreamProcess
from streamchat.protocol import DONE, FAIL, FailCode

# --- markers, put on by what a test uses (registered in pyproject.toml) -----------------------------------
# A fixture's name, or the start of it, decides: every Redis fixture needs a redis-server, every nginx
# fixture an nginx.
FIXTURE_MARKERS = {"browser": "browser", "redis": "redis", "nginx": "nginx"}
# Whole modules: the benchmark, the Redis tests (one of them starts a redis-server of its own), and
# the modules whose tests each start servers of their own or fuzz one (seconds per test, minutes in all).
MODULE_MARKERS = {
    "test_bench.py": "bench",
    "test_redis.py": "redis",
    "test_hardening_service.py": "slow",
    "test_lifecycle.py": "slow",
    "test_metrics.py": "slow",
    "test_openapi.py": "slow",
    "test_run_log.py": "slow",
    "test_tutorial.py": "slow",
}
# Tests that take two seconds or more each (real clocks, a hundred streams); the inner loop skips them.
# A test is named by its module and its name, with the parameters' id to name one case only.
SLOW_TESTS = {
    "test_service.py::test_service_heartbeats_while_the_first_token_is_slow",
    "test_service.py::test_service_holds_a_hundred_concurrent_streams_in_one_worker",
    "test_service.py::test_service_upstream_thinking_keeps_the_first_token_clock_from_running_out",
    "test_service.py::test_service_upstream_failures_become_one_fail_event[fault=silent-0-first_token_timeout-True]",
    "test_openai_provider.py::test_openai_provider_open_stream_keeps_only_its_body",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it uses, its module, and the list of slow tests."""
    for item in items:
        for fixture in item.fixturenames:
            for prefix, marker in FIXTURE_MARKERS.items():
                if fixture.startswith(prefix):
                    item.add_marker(marker)
        module = item.path.name
        if module in MODULE_MARKERS:
            item.add_marker(MODULE_MARKERS[module])
        if {f"{module}::{item.originalname}", f"{module}::{item.name}"} & SLOW_TESTS:
            item.add_marker("slow")


# --- the app in-process (Flask's test client, demo model) -----------------------------------------------


@pytest.fixture
def app():
    """The Flask app with the fast demo model."""
    return create_app(FAST_DEMO)


@pytest.fixture
def client(app):
    """A test client for the app."""
    return app.test_client()


# --- gunicorn in a child process --------------------------------------------------------------------------


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
        send_canary_runs(server, DEMO_CANARY_RUNS)
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
        send_canary_runs(server, OPENAI_CANARY_RUNS)
        yield server


# --- the fake upstream ------------------------------------------------------------------------------------
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
# axe-core, the accessibility audit the page tests run (test-only, pinned: npm ci --prefix tests/vendor).
AXE = Path(__file__).resolve().parent / "vendor" / "node_modules" / "axe-core" / "axe.min.js"
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
        send_canary_runs(server, DEMO_CANARY_RUNS)
        yield server


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium under Playwright, for the whole session."""
    missing = None
    if importlib.util.find_spec("playwright") is None:
        missing = "the playwright package is missing: pip install playwright (never `playwright install`)"
    elif not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing: apt-get install chromium"
    require(missing)

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def axe_script() -> str:
    """axe-core's script (tests/vendor, from npm), or a skip (a failure in CI) when not installed."""
    require(None if AXE.exists() else f"{AXE} is missing: npm ci --prefix tests/vendor --no-audit --no-fund")
    return AXE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def browser_with_bfcache(browser):
    """Headless Debian Chromium as `browser` starts it, but with its back/forward cache on.

    Playwright starts Chromium with --disable-back-forward-cache, so that go_back() always loads the
    page anew, and the page's `pageshow` path (the tab comes back) would never run.
    """
    chromium = browser.browser_type.launch(
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        ignore_default_args=["--disable-back-forward-cache"],
    )
    yield chromium
    chromium.close()


# --- the log canary: neither the key nor the prompt in any service log -----------------------------------
# Each session server gets a few runs that carry the canary prompt, through both ways of reading a run
# and through the failure paths (where the upstream's own words are logged). Each entry: the route, the
# conversation's last message after the canary prompt, and the terminal event it must end with (a run
# that ends otherwise tests nothing, so the fixture errors).

DEMO_CANARY_RUNS = [
    ("/stream", None, DONE),
    ("/runs", "/demo echo " + CANARY_PROMPT, DONE),
    ("/stream", "/demo fail " + FailCode.UPSTREAM_ERROR, FAIL),
    ("/runs", "/demo fail " + FailCode.INTERNAL, FAIL),  # a traceback in the log
]
OPENAI_CANARY_RUNS = [
    ("/stream", f"[fake echo] {CANARY_PROMPT}", DONE),
    ("/runs", f"[fake fault=status status=400] {CANARY_PROMPT}", FAIL),
    ("/stream", f"[fake fault=error_object after=2] {CANARY_PROMPT}", FAIL),
    ("/runs", f"[fake fault=status status=500 no_retry] {CANARY_PROMPT}", FAIL),
]
# Which servers were sent the canary prompt, for the session's last words.
CANARY_PROMPT_SERVERS: list[str] = []


def send_canary_runs(server: GunicornProcess, runs: list[tuple[str, str | None, str]]) -> None:
    """Send ``server`` one run per entry of ``runs``, each carrying the canary prompt; check each ending."""
    CANARY_PROMPT_SERVERS.append(server.base_url)
    with httpx.Client(base_url=server.base_url, timeout=15) as client:
        for route, last, ending in runs:
            messages = [{"role": "user", "content": CANARY_PROMPT}]
            if last is not None:
                messages += [{"role": "assistant", "content": "Noted."}, {"role": "user", "content": last}]
            response = client.post(route, json={"messages": messages})
            if route == "/runs":
                assert response.status_code == 201, response.text
                response = client.get(response.json()["stream_url"])
            assert response.status_code == 200, response.text
            events = parse_sse(response.content)
            assert events[-1]["event"] == ending, (route, last, events[-1])


# What the scan found, kept from the session's end until the terminal summary prints it.
CANARY_REPORT = pytest.StashKey[list]()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if a service log holds the canary key or the canary prompt."""
    findings = [(log, find_canaries(log.text)) for log in SERVICE_LOGS]
    findings = [(log, lines) for log, lines in findings if lines]
    with_key = sum(log.canary_key for log in SERVICE_LOGS)
    if not SERVICE_LOGS:
        lines = ["log canary: no gunicorn ran, so no service log was scanned"]
    else:
        scanned = (
            f"{len(SERVICE_LOGS)} gunicorn logs scanned; {with_key} ran with the canary key, "
            f"{len(CANARY_PROMPT_SERVERS)} were sent the canary prompt"
        )
        if not with_key and not CANARY_PROMPT_SERVERS:
            scanned += " (so the scan proves nothing)"
        lines = [f"log canary: {scanned}: " + ("FOUND in these logs" if findings else "neither found")]
    for log, found in findings:
        lines.append(f"  gunicorn started by {log.started_by}:")
        lines.extend(f"    {line}" for line in found)
    session.config.stash[CANARY_REPORT] = lines
    if findings and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print what the log canary scan found (every offending line, the canaries masked)."""
    lines = config.stash.get(CANARY_REPORT, [])
    if len(lines) > 1:
        terminalreporter.section("service logs hold a canary", sep="=", red=True, bold=True)
    for line in lines:
        terminalreporter.write_line(line)
