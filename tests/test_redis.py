"""Runs shared through a real Redis by two gunicorn "hosts", each with two workers.

Every test here talks to a real ``redis-server`` and real gunicorn processes over loopback sockets,
with the openai provider pointed at the fake upstream, so that the upstream's record tells when
the model's connection was closed. What is acted out: a run started on one host and read, resumed
and stopped through the other; a resume from an id the bounded stream no longer holds; the grace
period counted across hosts; live runs kept past a short RUN_TTL_SECONDS and finished ones
forgotten after it; a store closing while a write is in flight; a killed worker; a reload; Redis
killed and started again; 400 streams and the bounded number of Redis connections.

Run: ``python -m pytest tests/test_redis.py -q`` (about a minute; marked ``redis``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import ROOT, GunicornProcess, iter_events, tag, user, worker_pids
from redis_helpers import RedisProcess, require_redis_server

from fakeupstream import expected_text

# Short clocks so that failures show within a second or two.
CLOCKS = {
    "HEARTBEAT_SECONDS": "0.5",
    # A run is stopped if nobody reads it for this long, which on a loaded 2-core machine must leave
    # room for a client's GET to follow its POST /runs (400 of them at once, below).
    "DISCONNECT_GRACE_SECONDS": "3",
    # Long enough that a loaded 2-core machine never misses a lease renewal; the kill test sets less.
    "WORKER_LOST_SECONDS": "4",
    "FIRST_TOKEN_TIMEOUT_SECONDS": "10",
    "STALL_TIMEOUT_SECONDS": "10",
    "SSE_RETRY_MILLISECONDS": "100",
}


def host(redis_url: str, fake_upstream, workers: int = 2, **env: str) -> GunicornProcess:
    """Start one gunicorn "host" with ``workers`` workers on the shared Redis."""
    return GunicornProcess(
        {
            "REDIS_URL": redis_url,
            "WEB_CONCURRENCY": str(workers),
            "OPENAI_BASE_URL": fake_upstream.base_url,
            "OPENAI_API_KEY": "fake",
            **CLOCKS,
            **env,
        }
    )


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    """A redis-server for this module's hosts."""
    require_redis_server()
    server = RedisProcess()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redis_hosts(redis_server, fake_upstream) -> Iterator[tuple[GunicornProcess, GunicornProcess]]:
    """Two gunicorn instances ("hosts" A and B), two workers each, sharing one Redis."""
    with host(redis_server.url, fake_upstream) as a, host(redis_server.url, fake_upstream) as b:
        yield a, b


def start(base_url: str, content: str) -> str:
    """POST /runs and return the new run's id."""
    response = httpx.post(f"{base_url}/runs", json=user(content), timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def read(base_url: str, run_id: str, after_id: int = 0, stop_after: int | None = None) -> list[dict]:
    """Read a run's events (all of them, or the first few) through one host."""
    events = []
    headers = {"Last-Event-ID": str(after_id)}
    with httpx.stream("GET", f"{base_url}/runs/{run_id}/stream", headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for event in iter_events(response):
            events.append(event)
            if stop_after is not None and len(events) >= stop_after:
                break
    return events


def text_of(events: list[dict]) -> str:
    return "".join(event["data"]["text"] for event in events if event["event"] == "token")


def test_redis_run_started_on_one_host_is_read_and_resumed_through_either_with_one_generation(
    redis_hosts, fake_upstream
):
    a, b = redis_hosts
    label = tag()
    run_id = start(a.base_url, f"hello [fake tokens=20 tps=200 tag={label}]")
    whole = read(b.base_url, run_id)
    # A read of the upstream may bring several tokens in one event (under load): ids stay gapless.
    last = len(whole)
    assert [event["id"] for event in whole] == list(range(1, last + 1))
    assert text_of(whole) == expected_text(20)
    assert whole[-1]["event"] == "done"
    middle = last // 2
    resumed = read(a.base_url, run_id, after_id=middle)
    assert resumed == whole[middle:]
    status = httpx.get(f"{b.base_url}/runs/{run_id}").json()
    assert status == {
        "id": run_id,
        "model": "gpt-4o-mini",
        "state": "done",
        "last_event_id": last,
        "finish_reason": "stop",
    }
    assert len(fake_upstream.requests(label)) == 1  # one generation, however many readers


def test_redis_resume_from_a_trimmed_id_is_a_409_and_the_kept_tail_is_exact(redis_server, fake_upstream):
    with host(redis_server.url, fake_upstream, workers=1, EVENT_LOG_SIZE="5") as a:
        run_id = start(a.base_url, f"trimmed [fake tokens=30 tps=200 tag={tag()}]")
        deadline = time.monotonic() + 10
        while (status := httpx.get(f"{a.base_url}/runs/{run_id}", timeout=5).json())["state"] == "running":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        last = status["last_event_id"]  # the id of the stream's newest entry
        assert status["state"] == "done" and last > 6
        # MAXLEN is exact: the stream holds the last 5 events, so a resume after last - 5 is whole...
        kept = read(a.base_url, run_id, after_id=last - 5)
        assert [event["id"] for event in kept] == list(range(last - 4, last + 1))
        assert kept[-1]["event"] == "done"
        # ...and one event earlier is a gap: a 409 before any stream starts, never a silent hole.
        headers = {"Last-Event-ID": str(last - 6)}
        response = httpx.get(f"{a.base_url}/runs/{run_id}/stream", headers=headers, timeout=10)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "events_dropped"


def test_redis_stop_through_the_other_host_closes_the_upstream_within_a_second(redis_hosts, fake_upstream):
    a, b = redis_hosts
    label = tag()
    run_id = start(a.base_url, f"long [fake tokens=2000 tps=20 tag={label}]")
    first = read(b.base_url, run_id, stop_after=3)
    assert [event["event"] for event in first] == ["start", "token", "token"]
    stopped_at = time.time()
    assert httpx.post(f"{b.base_url}/runs/{run_id}/stop", timeout=5).status_code == 202
    record = fake_upstream.wait_for_outcome(label, timeout=5)
    assert record["outcome"] == "client_closed"
    assert record["closed_by_client_at"] - stopped_at < 1.0
    for _ in range(4):  # again, through any worker of either host: a repeated stop is fine
        assert httpx.post(f"{b.base_url}/runs/{run_id}/stop", timeout=5).status_code in (200, 202)
    record = fake_upstream.wait_for_outcome(label, timeout=5)
    assert record["outcome"] == "client_closed"
    rest = read(a.base_url, run_id, after_id=3)
    assert rest[-1] == {"id": rest[-1]["id"], "event": "done", "data": {"finish_reason": "stopped"}}
    assert httpx.get(f"{a.base_url}/runs/{run_id}").json()["state"] == "stopped"


def test_redis_stop_before_the_first_token_closes_the_upstream(redis_hosts, fake_upstream):
    a, b = redis_hosts
    label = tag()
    run_id = start(a.base_url, f"slow [fake tokens=5 ttft=5 tag={label}]")
    time.sleep(0.3)  # the upstream request is out, no token yet
    stopped_at = time.time()
    assert httpx.post(f"{b.base_url}/runs/{run_id}/stop", timeout=5).status_code == 202
    record = fake_upstream.wait_for_outcome(label, timeout=5)
    assert record["outcome"] == "client_closed"
    assert record["closed_by_client_at"] - stopped_at < 1.0


def test_redis_grace_period_counts_readers_on_every_host(redis_hosts, fake_upstream):
    a, b = redis_hosts
    label = tag()
    # 5 s of answer, read only through B: A's grace period (3 s) must not stop it.
    run_id = start(a.base_url, f"read elsewhere [fake tokens=100 tps=20 tag={label}]")
    events = read(b.base_url, run_id)
    assert text_of(events) == expected_text(100)
    assert events[-1]["event"] == "done" and events[-1]["data"]["finish_reason"] == "stop"


def test_redis_run_read_by_nobody_is_stopped_after_the_grace_period(redis_hosts, fake_upstream):
    a, b = redis_hosts
    label = tag()
    run_id = start(a.base_url, f"abandoned [fake tokens=2000 tps=20 tag={label}]")
    read(b.base_url, run_id, stop_after=2)  # read a little through B, then leave
    left_at = time.time()
    record = fake_upstream.wait_for_outcome(label, timeout=10)
    assert record["outcome"] == "client_closed"
    # DISCONNECT_GRACE_SECONDS is 3; the owner looks every tick (at most a quarter of it).
    assert 2.9 <= record["closed_by_client_at"] - left_at < 5.0
    assert httpx.get(f"{b.base_url}/runs/{run_id}").json()["state"] == "stopped"


def test_redis_live_runs_outlive_a_short_run_ttl_and_finished_ones_expire(redis_server, fake_upstream):
    # RUN_TTL_SECONDS of 1 s, shorter than both answers: a live run's keys must be kept alive all
    # along, by the worker that produces it (here through a 2.5 s think that writes nothing) and by
    # the worker that reads it for another (else the producer sees nobody reading and stops it).
    short = {"RUN_TTL_SECONDS": "1"}
    with (
        host(redis_server.url, fake_upstream, workers=1, **short) as a,
        host(redis_server.url, fake_upstream, workers=1, **short) as b,
    ):
        thinking = start(a.base_url, "quiet [fake think=2.5 tokens=5]")
        read_elsewhere = start(a.base_url, "long [fake tokens=100 tps=20]")  # 5 s
        with ThreadPoolExecutor(2) as pool:
            quiet = pool.submit(read, a.base_url, thinking)
            long = pool.submit(read, b.base_url, read_elsewhere)
            answers = [(quiet.result(), 5), (long.result(), 100)]
        for events, tokens in answers:
            assert text_of(events) == expected_text(tokens)
            assert events[-1]["event"] == "done" and events[-1]["data"]["finish_reason"] == "stop"
        # Finished, each is forgotten RUN_TTL_SECONDS after its end, by every host.
        deadline = time.monotonic() + 5
        while any(
            httpx.get(f"{b.base_url}/runs/{run_id}").status_code != 404
            for run_id in (thinking, read_elsewhere)
        ):
            assert time.monotonic() < deadline, "a finished run outlived its TTL"
            time.sleep(0.2)


# A worker's run store closing (at exit) while the writer waits for Redis's reply to a batch that
# holds a run's end: as the worker does, under gevent, in a process of its own.
CLOSE_WHILE_WRITING = """
from gevent import monkey; monkey.patch_all()
import sys, gevent, redis
from streamchat.runs.redis_store import RedisRunStore
from streamchat.runs.redis_keys import meta_key
url = sys.argv[1]
store = RedisRunStore(url, event_log_size=100, ttl_seconds=60, max_active_runs=10, grace_seconds=10,
                      worker_lost_seconds=15)
run = store.create("m")
store.append(run, "start", {"run": run, "model": "m"})
gevent.sleep(0.2)  # written: the writer is idle again
admin = redis.Redis.from_url(url)
admin.execute_command("CLIENT", "PAUSE", "300", "ALL")  # Redis answers nobody for 300 ms
store.finish(run, "done", {"finish_reason": "stop"})
gevent.sleep(0.05)  # the writer has taken the batch with the end, and waits for the reply
store.close()
print(admin.hget(meta_key(run), "state").decode())
"""


def test_redis_store_closing_waits_for_the_batch_in_flight(redis_server):
    result = subprocess.run(
        [sys.executable, "-c", CLOSE_WHILE_WRITING, redis_server.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"  # not "running": the run's end was not lost


def test_redis_many_concurrent_streams_across_hosts_are_exact_with_few_connections(redis_hosts, redis_server):
    a, b = redis_hosts
    count = 400
    tokens = 20
    results: dict[int, list[dict]] = {}

    def one(index: int) -> None:
        base, other = (
            ((a, b) if index % 2 else (b, a))[0].base_url,
            ((b, a) if index % 2 else (a, b))[0].base_url,
        )
        body = user(f"n{index} [fake tokens={tokens} tps=50]")
        with httpx.Client(timeout=60) as client:
            if (
                index % 4 < 2
            ):  # half in one step (POST /stream), half in two (POST /runs, then GET on the other)
                request = client.build_request("POST", f"{base}/stream", json=body)
            else:
                created = client.post(f"{base}/runs", json=body)
                assert created.status_code == 201, created.text
                request = client.build_request("GET", f"{other}/runs/{created.json()['id']}/stream")
            response = client.send(request, stream=True)
            try:
                assert response.status_code == 200, response.read()
                results[index] = list(iter_events(response))
            finally:
                response.close()

    from concurrent.futures import ThreadPoolExecutor

    peak_connections = 0
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(one, index) for index in range(count)]
        deadline = time.monotonic() + 60
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            peak_connections = max(peak_connections, len(redis_server.clients_by_name()))
            time.sleep(0.2)
        for future in futures:
            future.result(timeout=max(1, deadline - time.monotonic()))
    assert sorted(results) == list(range(count))
    for index, events in results.items():
        assert text_of(events) == expected_text(tokens), (index, events[-3:])
        assert events[-1]["event"] == "done"
        # Under load a read of the upstream may bring several tokens in one event: ids stay gapless.
        assert [event["id"] for event in events] == list(range(1, len(events) + 1))
        assert sum(event["data"]["tokens"] for event in events if event["event"] == "token") == tokens
    # 4 workers, each with at most 8: a pool of 5, and the writer's, the waiter's and the housekeeper's own.
    print(f"\nRedis connections at most {peak_connections} for {count} streams over 4 workers")
    assert peak_connections <= 4 * 8


def test_redis_killed_worker_gives_its_readers_worker_lost(redis_server, fake_upstream):
    quick = {"WORKER_LOST_SECONDS": "1.5"}
    with (
        host(redis_server.url, fake_upstream, **quick) as a,
        host(redis_server.url, fake_upstream, **quick) as b,
    ):
        label = tag()
        run_id = start(a.base_url, f"doomed [fake tokens=2000 tps=20 tag={label}]")
        with httpx.stream("GET", f"{b.base_url}/runs/{run_id}/stream", timeout=30) as response:
            events = iter_events(response)
            assert next(events)["event"] == "start"
            next(events)
            for pid in worker_pids(a.process.pid):  # the producing worker is one of them
                os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            rest = list(events)
        waited = time.monotonic() - killed_at
    assert rest[-1]["event"] == "fail"
    assert rest[-1]["data"]["code"] == "worker_lost" and rest[-1]["data"]["retryable"] is True
    assert waited < 1.5 + 0.5  # WORKER_LOST_SECONDS, plus a reader's round trip
    print(f"\nworker_lost seen {waited:.2f} s after the SIGKILL (WORKER_LOST_SECONDS=1.5)")


def test_redis_paused_worker_cannot_write_after_its_run_was_declared_lost(redis_server, fake_upstream):
    quick = {"WORKER_LOST_SECONDS": "1.5"}
    with (
        host(redis_server.url, fake_upstream, **quick) as a,
        host(redis_server.url, fake_upstream, **quick) as b,
    ):
        label = tag()
        run_id = start(a.base_url, f"paused [fake tokens=2000 tps=20 tag={label}]")
        with httpx.stream("GET", f"{b.base_url}/runs/{run_id}/stream", timeout=30) as response:
            events = iter_events(response)
            assert next(events)["event"] == "start"
            next(events)
            workers = worker_pids(a.process.pid)
            for pid in workers:  # paused, not dead: its lease runs out while it cannot renew it
                os.kill(pid, signal.SIGSTOP)
            try:
                rest = list(events)
            finally:
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
        assert rest[-1]["event"] == "fail" and rest[-1]["data"]["code"] == "worker_lost"
        # Resumed, the producer has tokens to write: the fence in Redis refuses them, and it stops.
        record = fake_upstream.wait_for_outcome(label, timeout=10)
        assert record["outcome"] == "client_closed"
        whole = read(b.base_url, run_id)
        assert whole[-1] == rest[-1]  # nothing was written after the run was declared lost
        assert [event["id"] for event in whole] == list(range(1, len(whole) + 1))
        assert f"run {run_id}: fenced out" in a.error_log()  # refused by the fence, not by chance


@pytest.mark.timeout(30)  # unfixed, the reader on B would wait for the run's TTL
def test_redis_writer_connection_lost_mid_run_ends_the_run_everywhere(redis_server, fake_upstream):
    with host(redis_server.url, fake_upstream) as a, host(redis_server.url, fake_upstream) as b:
        label = tag()
        run_id = start(a.base_url, f"cut [fake tokens=2000 tps=20 tag={label}]")
        with httpx.stream("GET", f"{b.base_url}/runs/{run_id}/stream", timeout=30) as response:
            events = iter_events(response)
            assert next(events)["event"] == "start"
            next(events)
            _kill_clients(redis_server, "streamchat-writer")  # a reset, while Redis itself is fine
            rest = list(events)
        # A's write fails: its run ends there, and A's housekeeper ends it in Redis too, so that a
        # reader elsewhere is not left with heartbeats until the run's TTL.
        assert rest[-1]["event"] == "fail" and rest[-1]["data"]["code"] == "store_unavailable"
        assert httpx.get(f"{b.base_url}/runs/{run_id}").json()["state"] == "failed"
        assert fake_upstream.wait_for_outcome(label, timeout=5)["outcome"] == "client_closed"
        # An idle writer connection that was closed is checked before it carries the next run.
        _kill_clients(redis_server, "streamchat-writer")
        time.sleep(1.5)
        body = user("again [fake tokens=5]")
        with httpx.stream("POST", f"{a.base_url}/stream", json=body, timeout=30) as r:
            again = list(iter_events(r))
        assert text_of(again) == expected_text(5) and again[-1]["event"] == "done"


def _kill_clients(server: RedisProcess, name: str) -> None:
    with server.client() as own:
        for client in own.client_list():
            if client["name"] == name:
                own.client_kill_filter(_id=client["id"])


def test_redis_reload_mid_stream_ends_every_stream_exactly(redis_server, fake_upstream):
    with host(redis_server.url, fake_upstream) as a, host(redis_server.url, fake_upstream) as b:
        tokens = 40  # 0.8 s at 50 tokens a second: well within the 2 s graceful timeout
        body = user(f"reload [fake tokens={tokens} tps=50]")
        with contextlib.ExitStack() as open_streams:
            client = open_streams.enter_context(httpx.Client(timeout=30))

            def open_stream(method: str, url: str, **kwargs) -> httpx.Response:
                return open_streams.enter_context(client.stream(method, url, **kwargs))

            # Produced and read on A; produced on A and read on B (A's old worker then holds no
            # connection, yet must wait for its producers); produced on B and read on A.
            on_a = [open_stream("POST", f"{a.base_url}/stream", json=body) for _ in range(3)]
            from_a = [start(a.base_url, body["messages"][0]["content"]) for _ in range(3)]
            read_on_b = [open_stream("GET", f"{b.base_url}/runs/{run_id}/stream") for run_id in from_a]
            from_b = [start(b.base_url, body["messages"][0]["content"]) for _ in range(3)]
            read_on_a = [open_stream("GET", f"{a.base_url}/runs/{run_id}/stream") for run_id in from_b]
            time.sleep(0.2)
            a.process.send_signal(signal.SIGHUP)  # the old workers stop; new ones start
            results = [list(iter_events(response)) for response in on_a + read_on_b]
            # A's old worker closes these with a retry hint; the client resumes them on A's new ones.
            results += [
                _resume(a.base_url, run_id, list(iter_events(response)))
                for run_id, response in zip(from_b, read_on_a, strict=True)
            ]
    assert len(results) == 9
    for events in results:
        assert events[-1]["event"] == "done", events[-1]
        assert text_of(events) == expected_text(tokens)
        assert [event["id"] for event in events] == list(range(1, len(events) + 1))


def test_redis_restart_mid_run_ends_readers_and_service_recovers(fake_upstream):
    require_redis_server()
    server = RedisProcess()
    try:
        with host(server.url, fake_upstream, workers=1) as a:
            label = tag()
            with httpx.stream(
                "POST",
                f"{a.base_url}/stream",
                json=user(f"x [fake tokens=2000 tps=20 tag={label}]"),
                timeout=30,
            ) as response:
                lines = response.iter_lines()
                while next(lines) != "event: token":
                    pass
                server.stop()
                killed_at = time.monotonic()
                rest = "\n".join(lines)
            ended = time.monotonic() - killed_at
            assert "event: fail" in rest and '"code":"store_unavailable"' in rest, rest[-300:]
            assert ended < 15
            assert fake_upstream.wait_for_outcome(label, timeout=5)["outcome"] == "client_closed"
            unhealthy = _wait_for_status(f"{a.base_url}/healthz", 503, within=5)
            assert unhealthy["status"] == "unavailable" and unhealthy["store"] == "redis"
            assert "127.0.0.1" not in str(unhealthy.get("message", ""))  # nothing of the URL
            refused = httpx.post(f"{a.base_url}/runs", json=user("hi"), timeout=10)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "store_unavailable"
            server.start()
            _wait_for_status(f"{a.base_url}/healthz", 200, within=10)
            with httpx.stream(
                "POST", f"{a.base_url}/stream", json=user("again [fake tokens=5]"), timeout=30
            ) as r:
                again = list(iter_events(r))
            assert text_of(again) == expected_text(5) and again[-1]["event"] == "done"
            print(f"\nreader ended {ended:.2f} s after Redis was killed")
    finally:
        server.close()


def _wait_for_status(url: str, status: int, within: float) -> dict:
    deadline = time.monotonic() + within
    while True:
        response = httpx.get(url, timeout=10)
        if response.status_code == status:
            return response.json()
        assert time.monotonic() < deadline, f"{url} still answers {response.status_code}"
        time.sleep(0.1)


def _resume(base_url: str, run_id: str, events: list[dict]) -> list[dict]:
    """Read a run to its end as EventSource would: reconnect with Last-Event-ID after a close."""
    for _ in range(20):
        if events and events[-1]["event"] in ("done", "fail"):
            return events
        events += read(base_url, run_id, after_id=events[-1]["id"] if events else 0)
        if events and events[-1]["event"] in ("done", "fail"):
            return events
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not end: {events[-3:]}")
