"""GET /metrics: exact counts after scripted runs, read with prometheus-client's own parser.

The same script of runs is acted out against gunicorn with one worker (memory store) and with two
workers sharing a real Redis, where a scrape reaches either worker and must still count every
worker's runs (prometheus-client's multiprocess mode, set up in gunicorn.conf.py). The script: an
answer to its end, a failure before the first token, a silent model that gets heartbeats until its
first-token clock runs out, a run stopped by a stop request while it is read, and a client that
leaves (its run is stopped after the grace period). In-process: the refusal of a non-loopback client.

Run: ``python -m pytest tests/test_metrics.py -q`` (about 30 s; the Redis test is marked ``redis``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gevent
import httpx
import pytest
from helpers import FAST_DEMO, GunicornProcess, iter_events, parse_sse, user, worker_pids
from prometheus_client.parser import text_string_to_metric_families
from redis_helpers import RedisProcess, require_redis_server

from app import create_app
from streamchat.metrics import metrics_allowed
from streamchat.sse import HEARTBEAT

# The demo model, fast and steady; heartbeats every half second, so that only the silent run gets any.
DEMO = {
    "MODEL_PROVIDER": "demo",
    "DEMO_TOKENS_PER_SECOND": "200",
    "DEMO_FIRST_TOKEN_SECONDS": "0.02",
    "DEMO_JITTER": "0",
    "HEARTBEAT_SECONDS": "0.5",
    "DISCONNECT_GRACE_SECONDS": "1",
    # The silent run fails after about three heartbeats.
    "FIRST_TOKEN_TIMEOUT_SECONDS": "1.7",
    # The script starts a handful of runs from one address: no per-client limit may refuse one.
    "RATE_LIMIT": "0",
    "MAX_RUNS_PER_CLIENT": "0",
}


@pytest.fixture(scope="module")
def metrics_server() -> Iterator[GunicornProcess]:
    """gunicorn with one worker (memory store) and the steady demo model."""
    with GunicornProcess(DEMO) as server:
        yield server


@pytest.fixture(scope="module")
def redis_metrics_server() -> Iterator[GunicornProcess]:
    """gunicorn with two workers sharing a real Redis, and the steady demo model."""
    require_redis_server()
    redis_server = RedisProcess()
    try:
        with GunicornProcess({**DEMO, "REDIS_URL": redis_server.url, "WEB_CONCURRENCY": "2"}) as server:
            yield server
    finally:
        redis_server.close()


# --- reading the metrics -------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Parse a metrics page with the library's parser into {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(base_url: str) -> Samples:
    """GET /metrics (a new connection each time: with two workers, either may answer)."""
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def exact(samples: Samples) -> Samples:
    """Keep the samples whose values a script can know: not timings, not time-dependent buckets."""
    kept = {}
    for (name, labels), value in samples.items():
        if not name.startswith("streamchat_") or name.endswith("_created"):
            continue
        if name == "streamchat_time_to_first_token_seconds_sum":
            continue
        if name.endswith("_bucket") and labels != (("le", "+Inf"),):
            continue
        kept[(name, labels)] = value
    return kept


def gauge(samples: Samples, name: str) -> float:
    return samples[(name, ())]


def wait_for_gauges_at_zero(base_url: str) -> Samples:
    """Scrape until no run and no reader is live (a run is counted out just after its last event)."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(base_url)
        idle = (
            gauge(samples, "streamchat_active_runs") == 0 and gauge(samples, "streamchat_active_readers") == 0
        )
        if idle or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


# --- the script of runs ----------------------------------------------------------------------------------


def answer(base_url: str, prompt: str) -> list[dict]:
    """POST /stream and return the whole answer's events."""
    response = httpx.post(f"{base_url}/stream", json=user(prompt), timeout=30)
    assert response.status_code == 200, response.text
    return parse_sse(response.content)


def tokens_of(events: list[dict]) -> int:
    return sum(event["data"]["tokens"] for event in events if event["event"] == "token")


def whole_log(base_url: str, run_id: str) -> list[dict]:
    """Read a finished run's whole event log."""
    with httpx.stream("GET", f"{base_url}/runs/{run_id}/stream", timeout=30) as response:
        assert response.status_code == 200, response.read()
        return list(iter_events(response))


def wait_for_state(base_url: str, run_id: str, state: str) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{base_url}/runs/{run_id}", timeout=10).json()["state"] != state:
        assert time.monotonic() < deadline, f"run {run_id} never reached {state!r}"
        time.sleep(0.1)


def act_out(base_url: str) -> tuple[int, int]:
    """Act out the script of five runs; return (tokens relayed in all, heartbeats the clients got)."""
    tokens = 0

    # 1. An answer read to its end.
    events = parse_sse(httpx.post(f"{base_url}/stream", json=user("/demo long 30"), timeout=30).content)
    assert (events[-1]["event"], events[-1]["data"]["finish_reason"]) == ("done", "stop")
    tokens += tokens_of(events)
    assert tokens == 30

    # 2. A failure before the first token (what an upstream's 429 becomes).
    events = parse_sse(
        httpx.post(f"{base_url}/stream", json=user("/demo fail rate_limited"), timeout=30).content
    )
    assert [event["event"] for event in events] == ["start", "fail"]
    assert events[-1]["data"]["code"] == "rate_limited"

    # 3. A silent model: heartbeats until the first-token clock runs out.
    body = httpx.post(f"{base_url}/stream", json=user("/demo fail first_token_timeout"), timeout=30).content
    heartbeats = body.count(HEARTBEAT)
    assert heartbeats >= 2, body
    assert parse_sse(body)[-1]["data"]["code"] == "first_token_timeout"

    # 4. Stopped by a stop request while one response reads it: one live run, one live reader.
    created = httpx.post(f"{base_url}/runs", json=user("/demo long 1000"), timeout=10)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    with httpx.stream("GET", f"{base_url}/runs/{run_id}/stream", timeout=30) as response:
        events = iter_events(response)
        assert [next(events)["event"] for _ in range(3)] == ["start", "token", "token"]
        live = scrape(base_url)
        assert (gauge(live, "streamchat_active_runs"), gauge(live, "streamchat_active_readers")) == (1, 1)
        assert httpx.post(f"{base_url}/runs/{run_id}/stop", timeout=10).status_code == 202
        assert list(events)[-1]["data"] == {"finish_reason": "stopped"}
    tokens += tokens_of(whole_log(base_url, run_id))

    # 5. A client that leaves after two events: its run is stopped after the grace period.
    with httpx.stream("POST", f"{base_url}/stream", json=user("/demo long 1000"), timeout=30) as response:
        events = iter_events(response)
        run_id = next(events)["data"]["run"]
        next(events)
    wait_for_state(base_url, run_id, "stopped")
    tokens += tokens_of(whole_log(base_url, run_id))
    return tokens, heartbeats


def expected_after_script(tokens: int, heartbeats: int, more_answers: int = 0) -> Samples:
    """Every exact sample the script (and ``more_answers`` answers besides) must leave, and no other."""
    return {
        ("streamchat_runs_started_total", ()): 5 + more_answers,
        ("streamchat_runs_finished_total", (("code", ""), ("outcome", "done"))): 1 + more_answers,
        ("streamchat_runs_finished_total", (("code", ""), ("outcome", "stopped"))): 2,
        ("streamchat_runs_finished_total", (("code", "rate_limited"), ("outcome", "failed"))): 1,
        ("streamchat_runs_finished_total", (("code", "first_token_timeout"), ("outcome", "failed"))): 1,
        ("streamchat_active_runs", ()): 0,
        ("streamchat_active_readers", ()): 0,
        # Three runs got a first token: the answer, the stopped one and the abandoned one.
        ("streamchat_time_to_first_token_seconds_bucket", (("le", "+Inf"),)): 3 + more_answers,
        ("streamchat_time_to_first_token_seconds_count", ()): 3 + more_answers,
        ("streamchat_run_tokens_bucket", (("le", "+Inf"),)): 5 + more_answers,
        ("streamchat_run_tokens_count", ()): 5 + more_answers,
        ("streamchat_run_tokens_sum", ()): tokens,
        ("streamchat_tokens_relayed_total", ()): tokens,
        ("streamchat_upstream_failures_total", (("code", "rate_limited"),)): 1,
        ("streamchat_upstream_failures_total", (("code", "first_token_timeout"),)): 1,
        ("streamchat_client_disconnects_total", ()): 1,
        ("streamchat_stop_requests_total", ()): 1,
        ("streamchat_heartbeats_total", ()): heartbeats,
    }


# --- tests ---------------------------------------------------------------------------------------------


def test_metrics_count_a_script_of_runs_exactly_with_one_worker(metrics_server):
    base_url = metrics_server.base_url
    assert exact(scrape(base_url)) == {
        key: 0
        for key in expected_after_script(0, 0)
        if not key[0].startswith("streamchat_runs_finished")
        and not key[0].startswith("streamchat_upstream_failures")
    }
    tokens, heartbeats = act_out(base_url)
    assert exact(wait_for_gauges_at_zero(base_url)) == expected_after_script(tokens, heartbeats)


def test_metrics_count_every_worker_exactly_with_two_workers_on_redis(redis_metrics_server):
    base_url = redis_metrics_server.base_url
    # Answers on eight connections at once, so that both workers take some (the kernel decides which).
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: answer(base_url, "/demo long 7"), range(8)))
    assert [tokens_of(events) for events in answers] == [7] * 8
    tokens, heartbeats = act_out(base_url)
    expected = expected_after_script(tokens + 8 * 7, heartbeats, more_answers=8)
    assert exact(wait_for_gauges_at_zero(base_url)) == expected
    # Each scrape lands on either worker, and every one adds up both workers' files.
    for _ in range(6):
        assert exact(scrape(base_url)) == expected


def mapped_file(pid: int, name: str) -> Path:
    """Return the one file called `name` that a process has mapped (prometheus-client maps its files)."""
    paths = {line.split(maxsplit=5)[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()}
    [path] = [path for path in paths if os.path.basename(path) == name]
    return Path(path)


def test_metrics_keep_a_killed_workers_counts_and_drop_its_gauges(redis_metrics_server):
    base_url = redis_metrics_server.base_url
    before = exact(wait_for_gauges_at_zero(base_url))
    master = redis_metrics_server.process.pid
    victim = worker_pids(master)[0]
    # The directory on_starting made for this master: the one holding the file the victim has mapped.
    # (A glob of the temporary directory could also match a directory left by an earlier master that
    # was killed, whose worker had the same pid.)
    metrics_dir = mapped_file(victim, f"gauge_livesum_{victim}.db").parent
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        workers = worker_pids(master)
        replaced = len(workers) == 2 and victim not in workers
        if replaced and all((metrics_dir / f"gauge_livesum_{pid}.db").exists() for pid in workers):
            break
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.1)
    # child_exit dropped the dead worker's gauges; its counters and histograms stay counted.
    assert not (metrics_dir / f"gauge_livesum_{victim}.db").exists()
    assert (metrics_dir / f"counter_{victim}.db").exists()
    assert (metrics_dir / f"histogram_{victim}.db").exists()
    assert exact(scrape(base_url)) == before


def test_metrics_time_to_first_token_buckets_run_from_10_ms_to_60_s(metrics_server):
    buckets = [
        dict(labels)["le"]
        for name, labels in scrape(metrics_server.base_url)
        if name == "streamchat_time_to_first_token_seconds_bucket"
    ]
    assert buckets == [
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1.0",
        "2.5",
        "5.0",
        "10.0",
        "30.0",
        "60.0",
        "+Inf",
    ]


def test_metrics_keep_counting_in_the_same_directory_after_a_reload(metrics_server):
    base_url = metrics_server.base_url
    before = exact(wait_for_gauges_at_zero(base_url))
    master = metrics_server.process.pid
    [old_worker] = worker_pids(master)
    os.kill(master, signal.SIGHUP)  # re-reads gunicorn.conf.py and replaces the worker
    deadline = time.monotonic() + 20
    # Until the old worker has gone: while it finishes, it answers a new run with 503 shutting_down.
    while len(workers := worker_pids(master)) != 1 or old_worker in workers:
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    assert exact(wait_for_gauges_at_zero(base_url)) == before
    events = answer(base_url, "/demo long 4")
    assert tokens_of(events) == 4, events
    after = exact(wait_for_gauges_at_zero(base_url))
    started = ("streamchat_runs_started_total", ())
    relayed = ("streamchat_tokens_relayed_total", ())
    assert (after[started] - before[started], after[relayed] - before[relayed]) == (1, 4)


def test_metrics_refused_to_a_client_not_on_loopback():
    client = create_app(FAST_DEMO).test_client()
    response = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 403
    assert response.json == {
        "error": {
            "code": "forbidden",
            "message": "The metrics are served to loopback clients or with the access token.",
        }
    }
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200


@pytest.mark.parametrize(
    ("remote_addr", "has_access_token", "allowed"),
    [
        ("127.0.0.1", False, True),
        ("127.8.9.10", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("203.0.113.9", False, False),
        ("10.0.0.1", False, False),
        ("::ffff:203.0.113.9", False, False),
        ("", False, False),
        (None, False, False),
        ("localhost", False, False),
        ("203.0.113.9", True, True),
    ],
)
def test_metrics_allowed_only_from_loopback_or_with_the_token(remote_addr, has_access_token, allowed):
    assert metrics_allowed(remote_addr, has_access_token) is allowed


def test_metrics_served_anywhere_with_the_access_token():
    token = "t" * 40
    client = create_app({**FAST_DEMO, "access_token": token}).test_client()
    outside = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get("/metrics", environ_base=outside).status_code == 403
    wrong = {"Authorization": "Bearer " + "x" * 40}
    assert client.get("/metrics", environ_base=outside, headers=wrong).status_code == 403
    right = {"Authorization": f"Bearer {token}"}
    response = client.get("/metrics", environ_base=outside, headers=right)
    assert response.status_code == 200
    assert "# TYPE streamchat_runs_started_total counter" in response.get_data(as_text=True)
    # A loopback scraper needs no token, even with one set.
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200


def test_metrics_in_process_count_a_run_in_the_default_registry():
    app = create_app(FAST_DEMO)
    client = app.test_client()
    before = parse(client.get("/metrics").get_data(as_text=True))
    events = parse_sse(client.post("/stream", json=user("/demo long 12")).data)
    assert events[-1]["event"] == "done"
    key = ("streamchat_runs_finished_total", (("code", ""), ("outcome", "done")))
    deadline = time.monotonic() + 5
    while True:
        gevent.sleep(0.01)  # the run is counted out by its producer's link, on the next turn of the hub
        after = parse(client.get("/metrics").get_data(as_text=True))
        if after.get(key, 0) > before.get(key, 0) or time.monotonic() > deadline:
            break
    assert after[key] - before.get(key, 0) == 1
    started = ("streamchat_runs_started_total", ())
    assert after[started] - before[started] == 1
    relayed = ("streamchat_tokens_relayed_total", ())
    assert after[relayed] - before[relayed] == 12


def test_metrics_in_process_count_a_response_closed_before_its_end_as_a_disconnect():
    client = create_app(FAST_DEMO).test_client()
    key = ("streamchat_client_disconnects_total", ())
    readers = ("streamchat_active_readers", ())
    before = parse(client.get("/metrics").get_data(as_text=True))
    response = client.post("/stream", json=user("/demo long 500"), buffered=False)
    frames = response.iter_encoded()
    next(frames)
    assert parse(client.get("/metrics").get_data(as_text=True))[readers] == before[readers] + 1
    response.close()  # what the server does when a write to the client fails: GeneratorExit
    after = parse(client.get("/metrics").get_data(as_text=True))
    assert after[key] - before[key] == 1
    assert after[readers] == before[readers]


def test_metrics_are_defined_once_however_many_apps():
    create_app(FAST_DEMO)
    page = create_app(FAST_DEMO).test_client().get("/metrics").get_data(as_text=True)
    assert page.count("# TYPE streamchat_runs_started_total counter\n") == 1
    assert page.count("# TYPE streamchat_active_runs gauge\n") == 1
