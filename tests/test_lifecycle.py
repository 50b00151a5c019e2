"""How runs end when gunicorn stops or reloads a worker, with the in-memory store.

A run in memory cannot outlive its process, so a worker told to stop lets its runs finish within
GRACEFUL_TIMEOUT (2 s for GunicornProcess) and ends any still live with ``fail`` ``shutdown``
(retryable) before the arbiter's SIGKILL: never a silent cut. tests/test_redis.py acts out the same
with runs shared through Redis.

Run: ``python -m pytest tests/test_lifecycle.py -q``
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from helpers import GunicornProcess, iter_events, user

from fakeupstream import expected_text

FAST = {"DEMO_TOKENS_PER_SECOND": "50", "DEMO_FIRST_TOKEN_SECONDS": "0", "HEARTBEAT_SECONDS": "0.5"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["stop", "reload"])
def test_lifecycle_live_run_ends_with_shutdown_before_the_worker_is_killed(signum):
    with GunicornProcess(FAST) as server:
        with httpx.stream(
            "POST", f"{server.base_url}/stream", json=user("/demo long 2000"), timeout=30
        ) as response:
            events = iter_events(response)
            assert next(events)["event"] == "start"
            next(events)
            server.process.send_signal(signum)
            signalled_at = time.monotonic()
            rest = list(events)
        took = time.monotonic() - signalled_at
        log = server.error_log()
    assert rest[-1]["event"] == "fail", log
    assert rest[-1]["data"]["code"] == "shutdown"
    assert rest[-1]["data"]["retryable"] is True
    assert [event["id"] for event in rest] == list(range(rest[0]["id"], rest[0]["id"] + len(rest)))
    assert took < 2.0  # before the graceful timeout, when the arbiter would SIGKILL the worker
    assert "did not finish in time" in log


def test_lifecycle_a_run_that_can_finish_in_time_finishes(fake_upstream):
    env = {"OPENAI_BASE_URL": fake_upstream.base_url, "OPENAI_API_KEY": "fake"}
    with (
        GunicornProcess(env) as server,
        httpx.stream(
            "POST", f"{server.base_url}/stream", json=user("[fake tokens=30 tps=50]"), timeout=30
        ) as response,
    ):
        events = iter_events(response)
        assert next(events)["event"] == "start"
        server.process.send_signal(signal.SIGTERM)
        rest = list(events)
    assert rest[-1]["event"] == "done"
    assert "".join(event["data"]["text"] for event in rest if event["event"] == "token") == expected_text(30)


def test_lifecycle_healthz_says_which_store_serves(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "store": "memory"}
