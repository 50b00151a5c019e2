"""Putting it on the internet, under a real gunicorn over real sockets: what a client must not exhaust.

What only a real server shows: a body that never arrives (BODY_TIMEOUT_SECONDS), a client that never
reads (SEND_TIMEOUT_SECONDS), a broken chunked body (a 400 and one log line, not a 500 with a
traceback), the start-up refusals, the 429 at N+1, the client's slots freed on every way a run ends
(a worker's death included, with Redis: with the memory store a dead worker's slots die with it),
the deadline and the budget, and a log that holds neither the key nor the prompt when an upstream
quotes them back. The in-process side is tests/test_guards.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from helpers import ROOT, GunicornProcess, answer_text, free_port, parse_sse, user, worker_pids

FAST = {
    "DEMO_TOKENS_PER_SECOND": "200",
    "DEMO_FIRST_TOKEN_SECONDS": "0",
    "DEMO_JITTER": "0",
    "HEARTBEAT_SECONDS": "0.5",
    "DISCONNECT_GRACE_SECONDS": "0.5",
}
LONG = "/demo long 4000"  # 20 s at 200 tokens a second: still live whenever a test looks


def raw_request(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    """Open a connection and send a request head (and the start of a body); return the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(head + body)
    return sock


def read_until_closed(sock: socket.socket, limit: int = 1_000_000) -> bytes:
    """Read everything the server sends until it closes the connection (bounded)."""
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def split_response(data: bytes) -> tuple[int, bytes]:
    """Return a raw response's status code and body."""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post_head(path: str, extra: bytes) -> bytes:
    return (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + extra
    )


def start_when_free(base_url: str, seconds: float = 5.0) -> None:
    """Start a short run as soon as the client's slot is free again, read it to its end (bounded)."""
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base_url, timeout=10) as client:
        while time.monotonic() < deadline:
            response = client.post("/stream", json=user("hi"))
            if response.status_code == 200:
                assert parse_sse(response.content)[-1]["event"] == "done"
                return
            assert response.json()["error"]["code"] == "too_many_active_runs"
            time.sleep(0.1)
    raise AssertionError(f"the client's slot was not freed within {seconds} s")


def assert_full(base_url: str) -> None:
    """Check that the client's one slot is taken."""
    response = httpx.post(f"{base_url}/runs", json=user("hi"), timeout=10)
    assert (response.status_code, response.json()["error"]["code"]) == (429, "too_many_active_runs")


# --- a server with short clocks and one live run per client -------------------------------------------


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[GunicornProcess]:
    """gunicorn with short body and send timeouts, one live run per client, and room for a huge answer."""
    with GunicornProcess(
        {
            **FAST,
            "BODY_TIMEOUT_SECONDS": "1",
            "SEND_TIMEOUT_SECONDS": "1.5",
            "MAX_RUNS_PER_CLIENT": "1",
            # The send-timeout test sends a 6 MB message for a 6 MB answer, past every socket buffer.
            "MAX_MESSAGE_CHARS": "7000000",
            "MAX_REQUEST_BYTES": "8000000",
            "MAX_TOKENS_LIMIT": "100000",
        }
    ) as server:
        yield server


@pytest.mark.parametrize(
    ("framing", "sent"),
    [
        ("a Content-Length that lies", (b"Content-Length: 100\r\n\r\n", b'{"messages"')),
        ("a chunked body that never ends", (b"Transfer-Encoding: chunked\r\n\r\n", b'5\r\n{"mes\r\n')),
    ],
)
def test_body_timeout_is_a_408_and_the_connection_closes(guarded_server, framing, sent):
    head, body = sent
    started = time.monotonic()
    with raw_request(guarded_server.port, post_head("/runs", head), body) as sock:
        status, answer = split_response(read_until_closed(sock))
    took = time.monotonic() - started
    assert status == 408
    assert json.loads(answer) == {
        "error": {"code": "request_timeout", "message": "The body did not arrive within 1 seconds."}
    }
    assert 0.9 <= took < 8, took  # the timeout, then the close (never the 100 s of old)


def test_body_timeout_frees_every_slow_body_and_others_are_served(guarded_server):
    slow = [
        raw_request(guarded_server.port, post_head("/runs", b"Content-Length: 50\r\n\r\n"), b"{")
        for _ in range(20)
    ]
    try:
        assert httpx.get(f"{guarded_server.base_url}/healthz", timeout=10).status_code == 200
        for sock in slow:
            assert split_response(read_until_closed(sock))[0] == 408
    finally:
        for sock in slow:
            sock.close()


def test_chunked_bad_size_line_is_a_400_and_one_log_line(guarded_server):
    before = guarded_server.error_log()
    head = post_head("/runs", b"Transfer-Encoding: chunked\r\n\r\n")
    with raw_request(guarded_server.port, head, b"zz\r\nab\r\n0\r\n\r\n") as sock:
        status, body = split_response(read_until_closed(sock))
    assert status == 400
    assert body == b'{"error":{"code":"malformed_body","message":"The body\'s chunked framing is broken."}}\n'
    time.sleep(0.2)
    new = guarded_server.error_log()[len(before) :]
    assert new.count("\n") == 1, new
    assert "refused a malformed request body from 127.0.0.1: Invalid chunk size: b'zz'" in new
    assert "Traceback" not in new


def test_send_timeout_stops_the_run_of_a_client_that_never_reads(guarded_server):
    # 6 MB of answer (60 pieces of 100,000 spaces each) fills every buffer between us, then the
    # answer goes on slowly for 25 s: without the send timeout the run would generate to the end.
    content = "/demo echo " + ("x" + " " * 99_999) * 60 + " y" * 5000
    body = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 100_000}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(15)
    try:
        sock.connect(("127.0.0.1", guarded_server.port))
        sock.sendall(post_head("/stream", b"Content-Length: %d\r\n\r\n" % len(body)) + body)
        start = b""
        while b'"run"' not in start and len(start) < 10_000:
            start += sock.recv(200)
        run_id = re.search(rb'"run": ?"([^"]+)"', start).group(1).decode()
        status = {}
        for _ in range(60):  # bounded: 15 s at most
            time.sleep(0.25)
            status = httpx.get(f"{guarded_server.base_url}/runs/{run_id}", timeout=10).json()
            if status["state"] != "running":
                break
        # Stopped by the grace period after the send timeout counted the reader gone, not finished.
        assert (status["state"], status.get("finish_reason")) == ("stopped", "stopped"), status
    finally:
        sock.close()
    assert "a client stopped reading for 1.5 s: its response is closed" in guarded_server.error_log()
    start_when_free(guarded_server.base_url)


def test_slots_are_freed_after_done_fail_stop_and_disconnect(guarded_server):
    base = guarded_server.base_url
    with httpx.Client(base_url=base, timeout=10) as client:
        # done
        with client.stream("POST", "/stream", json=user("/demo long 40")) as response:
            assert_full(base)
            assert parse_sse(response.read())[-1]["event"] == "done"
        start_when_free(base)
        # fail
        with client.stream("POST", "/stream", json=user("/demo fail upstream_error")) as response:
            assert parse_sse(response.read())[-1]["data"]["code"] == "upstream_error"
        start_when_free(base)
        # stop
        run_id = client.post("/runs", json=user(LONG)).json()["id"]
        assert_full(base)
        assert client.post(f"/runs/{run_id}/stop").status_code == 202
        start_when_free(base)
    # disconnect: the client goes away mid-answer; the grace period stops the run
    body = json.dumps(user(LONG)).encode()
    with raw_request(
        guarded_server.port, post_head("/stream", b"Content-Length: %d\r\n\r\n" % len(body)), body
    ) as sock:
        received = b""
        while b"event: token" not in received:
            received += sock.recv(4096)
        assert_full(base)
    start_when_free(base)


# --- rate limit, deadline, budget ------------------------------------------------------------------------


def test_rate_limit_429_with_retry_after_at_n_plus_one():
    with (
        GunicornProcess({**FAST, "RATE_LIMIT": "3/minute"}) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        for _ in range(3):
            assert client.post("/stream", json=user("hi")).status_code == 200
        refused = client.post("/runs", json=user("hi"))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_deadline_ends_a_long_run_and_the_budget_it_crossed_refuses_the_next():
    env = {**FAST, "MAX_RUN_SECONDS": "1", "DAILY_TOKEN_BUDGET": "50"}
    with GunicornProcess(env) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        started = time.monotonic()
        events = parse_sse(client.post("/stream", json=user(LONG)).content)
        assert time.monotonic() - started < 8
        assert events[-1]["data"] == {
            "code": "deadline_exceeded",
            "message": "The answer took longer than this server allows and was ended.",
            "retryable": False,
        }
        tokens = sum(e["data"]["tokens"] for e in events if e["event"] == "token")
        assert tokens > 50  # the budget did not cut the run that crossed it
        assert answer_text(events)
        refused = {}
        for _ in range(20):  # the producer's end charges the budget a moment after the last event
            refused = client.post("/runs", json=user("hi"))
            if refused.status_code == 429:
                break
            time.sleep(0.1)
        assert refused.json()["error"]["code"] == "budget_exhausted"
        assert int(refused.headers["Retry-After"]) <= 86_400


# --- start-up refusals -------------------------------------------------------------------------------


def refused_start(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run gunicorn as users do, expecting it to refuse; return its exit status and last line."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ACCESS_", "BIND"))}
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1]


def test_startup_refuses_a_short_access_token():
    secret = "short-but-secret"
    status, last = refused_start({"ACCESS_TOKEN": secret}, "--bind", f"127.0.0.1:{free_port()}")
    assert status != 0
    assert last.startswith(
        "streamchat: refusing to start: ACCESS_TOKEN has 16 characters; it needs at least 32."
    )
    assert secret not in last


@pytest.mark.parametrize("where", ["--bind", "BIND"])
def test_startup_refuses_a_public_bind_with_the_openai_provider_and_no_token(where):
    # Refused in on_starting, before gunicorn binds: nothing ever listens beyond loopback here.
    address = f"0.0.0.0:{free_port()}"
    env = {"OPENAI_API_KEY": "sk-test-not-a-real-key-000000", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    args = ("--bind", address) if where == "--bind" else ()
    if where == "BIND":
        env["BIND"] = address
    status, last = refused_start(env, *args)
    assert status != 0
    assert last.startswith(f"streamchat: refusing to start: listening on {address} (beyond this machine)")
    assert "Set ACCESS_TOKEN, or ALLOW_UNAUTHENTICATED=true" in last
    assert "sk-test" not in last


# --- secrets and privacy: a canary key and a canary prompt -------------------------------------------

CANARY_KEY = "sk-canary0key0that0must0never0be0logged"
CANARY_PROMPT = "canary prompt: the heron flies at midnight over Lisbon"


class _QuotingUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that refuses every request, quoting it back, key and all."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        quote = (
            f"Invalid request. Authorization: {self.headers['Authorization']}. Body: {body}. " + "x" * 3000
        )
        answer = json.dumps({"error": {"message": quote, "type": "invalid_request_error", "code": None}})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def quoting_upstream() -> Iterator[str]:
    """A quoting upstream on a loopback port, in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QuotingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_logs_hold_neither_the_key_nor_the_prompt(quoting_upstream, tmp_path):
    access_log = tmp_path / "access.log"
    env = {
        "OPENAI_BASE_URL": quoting_upstream,
        "OPENAI_API_KEY": CANARY_KEY,
        "ACCESS_LOG": str(access_log),
        "LOG_LEVEL": "debug",
    }
    with GunicornProcess(env) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        events = parse_sse(client.post("/stream", json=user(CANARY_PROMPT)).content)
        assert events[-1]["data"]["code"] == "bad_request"
        assert CANARY_KEY not in json.dumps(events)
        page = client.get("/").text + client.get("/openapi.json").text + client.get("/healthz").text
        assert CANARY_KEY not in page
        time.sleep(0.3)
        log = server.error_log() + access_log.read_text()
    assert "run " in log and "failed with bad_request" in log  # the failure was logged
    assert CANARY_KEY not in log
    assert CANARY_KEY[:20] not in log
    assert CANARY_PROMPT not in log
    failure = next(line for line in log.splitlines() if "failed with bad_request" in line)
    detail = failure.split("failed with bad_request: ", 1)[1]
    assert len(detail) <= 500 + len("... [cut at 500 characters]"), len(detail)
    assert "[redacted]" in detail


# --- several workers: limits and slots shared through Redis --------------------------------------------


@pytest.fixture
def redis_server():
    """A real redis-server on a free loopback port, always stopped."""
    from redis_helpers import RedisProcess, require_redis_server

    require_redis_server()
    server = RedisProcess()
    try:
        yield server
    finally:
        server.close()


def test_redis_limits_and_slots_hold_across_workers_and_survive_their_death(redis_server):
    env = {
        **FAST,
        "REDIS_URL": redis_server.url,
        "WEB_CONCURRENCY": "2",
        "RATE_LIMIT": "4/minute",
        "MAX_RUNS_PER_CLIENT": "1",
        "DISCONNECT_GRACE_SECONDS": "60",
        "WORKER_LOST_SECONDS": "1.5",
    }
    with GunicornProcess(env) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        assert client.post("/runs", json=user(LONG)).status_code == 201
        for _ in range(4):  # whichever worker answers, the client's one slot is taken
            assert_full(server.base_url)
        # Both workers die (the run's producer among them): the new ones free the slot once the
        # run store has ended the lost run.
        for pid in worker_pids(server.process.pid):
            os.kill(pid, signal.SIGKILL)
        start_when_free(server.base_url, seconds=15)
        assert client.post("/stream", json=user("hi")).status_code == 200  # runs 3 and 4 of 4
        assert client.post("/stream", json=user("hi")).status_code == 200
        refused = client.post("/stream", json=user("hi"))
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_requests")
        # The counts live in Redis, beside the runs.
        assert redis_server.client().keys("LIMITS:*") == [b"LIMITS:LIMITER/runs/127.0.0.1/4/1/minute"]


# --- the session cookie in a real browser: EventSource cannot send a header -------------------------------

SIGN_IN_AND_READ = """async ([token, content]) => {
    const post = (url, body) => fetch(url, {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    const before = (await post("/runs", {messages: [{role: "user", content}]})).status;
    const wrong = (await post("/session", {token: "not the token"})).status;
    const signIn = (await post("/session", {token})).status;
    const visible = document.cookie;  // HttpOnly: no script can read it
    const created = await post("/runs", {messages: [{role: "user", content}]});
    const run = await created.json();
    const events = await new Promise((resolve, reject) => {
        const seen = [];
        const source = new EventSource(run.stream_url);
        for (const name of ["start", "token", "done", "fail"]) {
            source.addEventListener(name, (event) => {
                seen.push([name, JSON.parse(event.data)]);
                if (name === "done" || name === "fail") { source.close(); resolve(seen); }
            });
        }
        setTimeout(() => { source.close(); reject(new Error("no terminal event in 10 s")); }, 10000);
    });
    const signOut = (await fetch("/session", {method: "DELETE"})).status;
    const after = (await post("/runs", {messages: [{role: "user", content}]})).status;
    return {before, wrong, signIn, visible, created: created.status, events, signOut, after};
}"""


def test_session_cookie_lets_eventsource_read_a_run_in_chromium(browser):
    token = "c" * 40
    with GunicornProcess({**FAST, "ACCESS_TOKEN": token}) as server:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{server.base_url}/")
            result = page.evaluate(SIGN_IN_AND_READ, [token, "/demo echo signed in"])
            cookies = context.cookies()
        finally:
            context.close()
    assert (result["before"], result["wrong"], result["signIn"], result["created"]) == (401, 401, 204, 201)
    assert result["visible"] == ""
    names = [name for name, _ in result["events"]]
    assert names[0] == "start" and names[-1] == "done"
    assert "".join(data["text"] for name, data in result["events"] if name == "token") == "signed in"
    assert (result["signOut"], result["after"]) == (204, 401)
    # Signed out: the browser holds no session cookie any more.
    assert [c["name"] for c in cookies] == []


def test_redis_daily_budget_is_shared_by_every_worker(redis_server):
    env = {
        **FAST,
        "REDIS_URL": redis_server.url,
        "WEB_CONCURRENCY": "2",
        "MAX_RUN_SECONDS": "1",
        "DAILY_TOKEN_BUDGET": "50",
    }
    with GunicornProcess(env) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        events = parse_sse(client.post("/stream", json=user(LONG)).content)
        assert events[-1]["data"]["code"] == "deadline_exceeded"  # a run that crossed the budget
        assert sum(e["data"]["tokens"] for e in events if e["event"] == "token") > 50
        codes = []
        for _ in range(40):  # new connections, so both workers answer; the end charges a moment later
            with httpx.Client(base_url=server.base_url, timeout=10) as fresh:
                refused = fresh.post("/runs", json=user("hi"))
            codes.append(refused.json().get("error", {}).get("code") if refused.status_code != 201 else 201)
            if codes[-4:] == ["budget_exhausted"] * 4:
                break
            time.sleep(0.1)
        assert codes[-4:] == ["budget_exhausted"] * 4, codes
        assert int(refused.headers["Retry-After"]) <= 86_400
        # The day's spending lives in Redis, beside the runs, where every worker and host reads it.
        (key,) = redis_server.client().keys("sc:budget:*")
        assert int(redis_server.client().get(key)) > 50
