"""The whole service under a real gunicorn (gevent worker) on a loopback port, over real sockets.

The openai provider talks to the fake upstream, so each test can check what the upstream saw: that
its connection was closed after a stop or a disconnect, and that a resume never called it twice.
"""

import json
import socket
import threading
import time

import httpx
import pytest
from helpers import (
    GunicornProcess,
    answer_text,
    check_stop_closes_the_upstream,
    iter_events,
    parse_sse,
    tag,
    user,
)
from httpx_sse import connect_sse

from fakeupstream import expected_text


def read_events(response: httpx.Response, stop_after: int | None = None) -> list[dict]:
    """Read events from a streaming response with httpx-sse, optionally only the first few."""
    events = []
    for event in iter_events(response):
        events.append(event)
        if stop_after is not None and len(events) >= stop_after:
            break
    return events


def test_service_streams_tokens_spread_over_time(openai_server, fake_upstream):
    label = tag()
    arrivals = []
    with httpx.Client(timeout=30) as client:
        body = user(f"go [fake tokens=200 tps=200 tag={label}]")
        with connect_sse(client, "POST", f"{openai_server.base_url}/stream", json=body) as source:
            events = []
            for sse in source.iter_sse():
                if sse.data:
                    events.append({"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)})
                    arrivals.append(time.monotonic())
    assert answer_text(events) == expected_text(200)
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["usage"]["completion_tokens"] == 200
    # 200 tokens at 200/s take about a second upstream; relayed as they come, they arrive spread out
    # over most of that second rather than in one burst at the end.
    assert arrivals[-1] - arrivals[1] > 0.5
    assert len({round(t, 2) for t in arrivals}) > 50
    assert fake_upstream.wait_for_outcome(label)["outcome"] == "completed"


def test_service_first_bytes_go_out_before_the_first_token(openai_server):
    with httpx.Client(timeout=30) as client:
        body = user(f"slow [fake tokens=1 ttft=1.5 tag={tag()}]")
        with client.stream("POST", f"{openai_server.base_url}/stream", json=body) as response:
            chunks = response.iter_raw()
            started = time.monotonic()
            first = next(chunks)
            waited = time.monotonic() - started
            rest = b"".join(chunks)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert first.startswith(b"retry: 3000\n\n")
    assert waited < 1.0
    assert parse_sse(first + rest)[-1]["event"] == "done"


def test_service_heartbeats_while_the_first_token_is_slow(openai_server):
    with httpx.Client(timeout=30) as client:
        body = user(f"think [fake tokens=2 ttft=3 tag={tag()}]")
        with client.stream("POST", f"{openai_server.base_url}/stream", json=body) as response:
            raw = b"".join(response.iter_raw())
    before_first_token = raw.split(b"event: token", 1)[0]
    # HEARTBEAT_SECONDS is 0.5 for this server: about six pings in three silent seconds.
    assert before_first_token.count(b": ping\n\n") >= 4
    assert answer_text(parse_sse(raw)) == expected_text(2)


def test_service_stop_closes_the_upstream_within_a_second(openai_server, fake_upstream):
    check_stop_closes_the_upstream(openai_server.base_url, fake_upstream)


def test_service_disconnect_closes_the_upstream_after_the_grace_period(openai_server, fake_upstream):
    label = tag()
    with httpx.Client(timeout=30) as client:
        body = user(f"long [fake tokens=500 tps=20 tag={label}]")
        with client.stream("POST", f"{openai_server.base_url}/stream", json=body) as response:
            events = read_events(response, stop_after=3)
        left_at = time.time()  # leaving the block closes the connection
    run_id = events[0]["data"]["run"]
    record = fake_upstream.wait_for_outcome(label, timeout=10)
    assert record["outcome"] == "client_closed"
    # DISCONNECT_GRACE_SECONDS is 1 for this server: not before it, and promptly after it.
    assert 0.9 <= record["closed_by_client_at"] - left_at < 2.5
    status = httpx.get(f"{openai_server.base_url}/runs/{run_id}").json()
    assert status["state"] == "stopped", openai_server.error_log()


def test_service_disconnect_before_the_first_token_still_stops_the_upstream(openai_server, fake_upstream):
    label = tag()
    with socket.create_connection(("127.0.0.1", openai_server.port)) as raw:
        payload = json.dumps(user(f"never [fake fault=silent tag={label}]")).encode()
        raw.sendall(
            b"POST /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while b"event: start" not in received:
            chunk = raw.recv(4096)
            assert chunk, received
            received += chunk
        left_at = time.time()
    record = fake_upstream.wait_for_outcome(label, timeout=10)
    assert record["outcome"] == "client_closed"
    # The grace period (1 s) from the moment the client left: the reader's watch on the client
    # socket saw it at once. Without the watch, only a failed heartbeat write (every 0.5 s; the
    # first after a close still succeeds) would tell, and the upstream closes 1.5 to 2 s after.
    assert 0.9 <= record["closed_by_client_at"] - left_at < 1.5
    assert record["tokens_sent"] == 0


def test_service_resume_replays_exactly_the_missing_tail(openai_server, fake_upstream):
    label = tag()
    base = openai_server.base_url
    with httpx.Client(timeout=30) as client:
        created = client.post(f"{base}/runs", json=user(f"go [fake tokens=60 tps=100 tag={label}]")).json()
        with client.stream("GET", f"{base}{created['stream_url']}") as response:
            first = read_events(response, stop_after=10)
        with client.stream(
            "GET", f"{base}{created['stream_url']}", headers={"Last-Event-ID": str(first[-1]["id"])}
        ) as response:
            rest = read_events(response)
    ids = [e["id"] for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert [e["event"] for e in rest].count("start") == 0
    assert answer_text(first + rest) == expected_text(60)
    assert rest[-1]["event"] == "done"
    assert len(fake_upstream.requests(label)) == 1  # never a second upstream call
    after = httpx.get(f"{base}{created['stream_url']}", headers={"Last-Event-ID": str(ids[-1])})
    assert after.status_code == 204


@pytest.mark.parametrize(
    ("directive", "tokens", "code", "retryable"),
    [
        ("fault=silent", 0, "first_token_timeout", True),
        ("fault=stall after=3", 3, "stalled", True),
        ("fault=drop after=2", 2, "connection_lost", True),
        ("fault=status status=401", 0, "upstream_auth", False),
        ("fault=error_object after=1", 1, "upstream_error", False),
        ("fault=no_done after=2", 2, "truncated", True),
    ],
)
def test_service_upstream_failures_become_one_fail_event(openai_server, directive, tokens, code, retryable):
    with httpx.Client(timeout=30) as client:
        body = user(f"x [fake {directive} tag={tag()}]")
        raw = client.post(f"{openai_server.base_url}/stream", json=body).content
    events = parse_sse(raw)
    assert answer_text(events) == expected_text(tokens)
    assert [e["event"] for e in events].count("fail") == 1
    assert events[-1]["event"] == "fail"
    assert events[-1]["data"]["code"] == code
    assert events[-1]["data"]["retryable"] is retryable


def test_service_upstream_thinking_keeps_the_first_token_clock_from_running_out(fake_upstream):
    # A reasoning model (vLLM, Ollama) streams its thinking with no answer text, here for 1.5 s
    # against a first-token clock of 0.5 s: it is alive, so the run waits for its answer. Silence
    # as long still fails (fault=silent, above).
    env = {"OPENAI_BASE_URL": fake_upstream.base_url, "OPENAI_API_KEY": "fake"}
    with GunicornProcess({**env, "FIRST_TOKEN_TIMEOUT_SECONDS": "0.5"}) as server:
        body = user(f"why? [fake think=1.5 ttft=0 tokens=3 tag={tag()}]")
        events = parse_sse(httpx.post(f"{server.base_url}/stream", json=body, timeout=30).content)
    assert events[-1]["event"] == "done", events[-1]
    assert answer_text(events) == expected_text(3)


def test_service_holds_a_hundred_concurrent_streams_in_one_worker(openai_server, fake_upstream):
    label = tag()
    results: list[str | None] = [None] * 100

    def one(index: int) -> None:
        body = user(f"n{index} [fake tokens=40 tps=50 tag={label}]")
        with httpx.Client(timeout=60) as client:
            events = parse_sse(client.post(f"{openai_server.base_url}/stream", json=body).content)
        if events and events[-1]["event"] == "done":
            results[index] = answer_text(events)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [expected_text(40)] * 100
    assert len(fake_upstream.requests(label)) == 100


def test_service_demo_model_answers_without_a_key(demo_server):
    raw = httpx.post(
        f"{demo_server.base_url}/stream", json=user("/demo echo no key needed"), timeout=30
    ).content
    events = parse_sse(raw)
    assert events[0]["data"]["model"] == "demo"
    assert answer_text(events) == "no key needed"


def test_service_oversized_chunked_body_is_413_not_truncated(demo_server):
    # A chunked body has no Content-Length, so only reading it shows that it is too large.
    body = json.dumps(user("/demo echo " + "x" * 1_000_001)).encode()
    response = httpx.post(
        f"{demo_server.base_url}/stream",
        content=iter([body[:500_000], body[500_000:]]),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_entity_too_large"


def test_service_chunked_body_under_the_limit_streams(demo_server):
    body = json.dumps(user("/demo echo chunked is fine")).encode()
    response = httpx.post(
        f"{demo_server.base_url}/stream",
        content=iter([body[:10], body[10:]]),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert answer_text(parse_sse(response.content)) == "chunked is fine"
