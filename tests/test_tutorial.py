"""The tutorial's steps run, and every mistake it names is shown happening, then fixed.

docs/tutorial.md walks from examples/step1_relay.py to examples/step6_runs.py. The tests here start
each step under gunicorn's gevent worker on 127.0.0.1, pointed at the fake upstream, and run the
naive version beside ours: the naive one must break exactly as the tutorial says, and ours must not.
The fetch() reader of step 3 is tested under Node (tests/js/tutorial.test.mjs); step 4's EventSource
runs in Chromium. A proxy's idle timeout is shown with the small proxy below, not nginx.

``UPDATE_SCREENSHOT=1`` also writes docs/tutorial-raw-events.png; otherwise the tests write nothing
into the tree. Run them alone::

    python -m pytest tests/test_tutorial.py -q
"""

from __future__ import annotations

import http.client
import importlib
import itertools
import json
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import flask
import openai
import pytest
from helpers import GunicornProcess

from examples import step2_wire_format
from examples.step2_wire_format import encode, read_events
from fakeupstream import expected_text

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
SCREENSHOT = ROOT / "docs" / "tutorial-raw-events.png"
HEARTBEAT = b": ping\n\n"
# Short clocks, so that a silent model, a heartbeat and a grace period each take a fraction of a second.
HEARTBEAT_SECONDS = 0.2
GRACE_SECONDS = 0.5
PROXY_IDLE_SECONDS = 1.0
# What step 4's access log says of each request: the request line, the status, the Last-Event-ID.
ACCESS_LOG_FORMAT = "%(r)s %(s)s %({last-event-id}i)s"
WAIT_MS = 10_000


# --- the steps under gunicorn ------------------------------------------------------------------------


class Example(GunicornProcess):
    """One example's ``app`` under gunicorn's gevent worker, on a free loopback port.

    A GunicornProcess with the example's app in place of the service's, so its log is scanned for
    the session's canaries like every other server's (tests/conftest.py).
    """

    def __init__(self, module: str, env: dict[str, str], access_log: Path | None = None) -> None:
        self.access_log = access_log
        logging = ["--access-logfile", str(access_log), "--access-logformat", ACCESS_LOG_FORMAT]
        args = (*(logging if access_log else []), "--graceful-timeout", "1", f"examples.{module}:app")
        # Ready when the worker answers: the master listens before the worker has imported the app.
        super().__init__(env, args=args, ready_path="/_ready")

    def log_lines(self) -> list[str]:
        """Return the access log's lines so far, but the browser's own favicon requests."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [line for line in lines if "/favicon.ico " not in line]


def _env(fake_upstream) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": fake_upstream.base_url,
        "OPENAI_API_KEY": "fake",
        "HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "GRACE_SECONDS": str(GRACE_SECONDS),
    }


@pytest.fixture(scope="module")
def step1(fake_upstream) -> Iterator[Example]:
    """Step 1, the naive relay, under gunicorn."""
    example = Example("step1_relay", _env(fake_upstream))
    yield example
    example.stop()


@pytest.fixture(scope="module")
def step2(fake_upstream) -> Iterator[Example]:
    """Step 2, the wire format done right, under gunicorn."""
    example = Example("step2_wire_format", _env(fake_upstream))
    yield example
    example.stop()


@pytest.fixture(scope="module")
def step4(fake_upstream, tmp_path_factory) -> Iterator[Example]:
    """Step 4, POST then EventSource, under gunicorn with an access log."""
    log = tmp_path_factory.mktemp("step4") / "access.log"
    example = Example("step4_eventsource", _env(fake_upstream), access_log=log)
    yield example
    example.stop()


@pytest.fixture(scope="module")
def step5(fake_upstream) -> Iterator[Example]:
    """Step 5, heartbeats and a producer greenlet, under gunicorn."""
    example = Example("step5_heartbeat", _env(fake_upstream))
    yield example
    example.stop()


@pytest.fixture(scope="module")
def step6(fake_upstream) -> Iterator[Example]:
    """Step 6, runs, under gunicorn."""
    example = Example("step6_runs", _env(fake_upstream))
    yield example
    example.stop()


# --- clients ------------------------------------------------------------------------------------------


def ask(content: str) -> bytes:
    """Return the JSON body that asks one question."""
    return json.dumps({"messages": [{"role": "user", "content": content}]}).encode()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """Send one request on a new connection and return the (still unread) response."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    # Connection: close, so that the server ends the connection with the response (and a proxy's too).
    headers = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
    connection.request(method, path, body=body, headers=headers)
    return connection.getresponse()


def status_of(port: int, method: str, path: str, headers: dict | None = None) -> int:
    """Send one request, read its answer, and return its status."""
    with request(port, method, path, headers=headers) as response:
        response.read()
        return response.status


def chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """Yield the body as the network delivers it."""
    while chunk := response.read1(65536):
        yield chunk


def post_stream(example: Example, content: str) -> bytes:
    """POST a question to the example's /stream and return the whole body."""
    response = request(example.port, "POST", "/stream", ask(content))
    assert (response.status, response.headers["Content-Type"]) == (200, "text/event-stream; charset=utf-8")
    return response.read()


def open_raw(port: int, content: str) -> socket.socket:
    """Send POST /stream on a raw socket, so that the test decides when the client leaves."""
    body = ask(content)
    head = "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return client


def recv_until(client: socket.socket, marker: bytes) -> bytes:
    """Receive until ``marker`` has arrived; return all that came."""
    received = b""
    while marker not in received:
        data = client.recv(4096)
        assert data, f"the connection closed before {marker!r}: {received!r}"
        received += data
    return received


def naive_texts(body: bytes) -> list[str]:
    """Read step 1's stream as its clients do: every ``data:`` line is answer text."""
    return [json.loads(line[6:])["text"] for line in body.decode().split("\n") if line.startswith("data: {")]


def frames(words: list[str], first_id: int = 1) -> bytes:
    """Return step 2's frames for these tokens and a ``done`` with finish reason stop."""
    tokens = [encode("token", {"text": word}, event_id) for event_id, word in enumerate(words, first_id)]
    return b"".join(tokens) + encode("done", {"finish_reason": "stop"}, first_id + len(words))


def words(count: int) -> list[str]:
    """Return the fake upstream's default answer, token by token."""
    return [expected_text(n + 1)[len(expected_text(n)) :] for n in range(count)]


# --- step 1: it works, and what it gets wrong -----------------------------------------------------------


def test_step1_relays_the_sdk_stream_as_sse(step1):
    assert post_stream(step1, "hi [fake tokens=5]") == (
        b'data: {"text": "Hello"}\n\ndata: {"text": ","}\n\ndata: {"text": " world"}\n\n'
        b'data: {"text": "!"}\n\ndata: {"text": "\\n"}\n\ndata: [DONE]\n\n'
    )


def test_error_text_in_the_answer_reads_like_an_answer_and_fail_does_not(step1, step2):
    failed = post_stream(step1, "hi [fake fault=status status=401]")
    error = "".join(naive_texts(failed))
    assert error.startswith("Error: Error code: 401")
    # A model that answers with the same words: step 1's client sees exactly the same thing.
    said = post_stream(step1, f"{error} [fake echo]")
    assert "".join(naive_texts(said)) == error
    assert failed.endswith(b"data: [DONE]\n\n") and said.endswith(b"data: [DONE]\n\n")
    # Step 2: a failure is a `fail` event, and an answer is tokens.
    assert post_stream(step2, "hi [fake fault=status status=401]") == encode(
        "fail", {"code": "upstream", "message": "The model failed. Try again."}, 1
    )
    said = list(read_events([post_stream(step2, f"{error} [fake echo]")]))
    assert {event for event, _ in said} == {"token", "done"}
    assert "".join(json.loads(data).get("text", "") for _, data in said) == error


# --- step 2: the wire format ----------------------------------------------------------------------------


def test_step2_numbers_and_names_every_event(step2):
    assert post_stream(step2, "hi [fake tokens=5]") == frames(["Hello", ",", " world", "!", "\n"])


def test_step2_encode_keeps_any_text_on_one_ascii_line():
    assert encode("token", {"text": "a\nb\r \u2028 é"}, 7) == (
        b'id: 7\nevent: token\ndata: {"text": "a\\nb\\r \\u2028 \\u00e9"}\n\n'
    )


def test_splitlines_breaks_a_frame_at_u2028_and_read_events_does_not(fake_upstream):
    messages = [{"role": "user", "content": "hi [fake tokens=17]"}]
    body = json.dumps({"model": "m", "stream": True, "messages": messages}).encode()
    headers = {"Authorization": "Bearer x"}
    response = request(fake_upstream.port, "POST", "/v1/chat/completions", body, headers)
    received = list(chunks(response))
    raw = b"".join(received)
    assert "\u2028".encode() in raw  # the upstream sends it raw, as OpenAI does
    # The mistake: str.splitlines() also ends a line at U+2028, in the middle of a JSON string.
    lines = [line for line in raw.decode().splitlines() if line.startswith("data: {")]
    with pytest.raises(json.JSONDecodeError, match="Unterminated string"):
        [json.loads(line[6:]) for line in lines]
    # read_events splits where SSE does, however the bytes were cut: as received, and byte by byte.
    for pieces in (received, [raw[i : i + 1] for i in range(len(raw))]):
        datas = [data for _, data in read_events(pieces) if data != "[DONE]"]
        deltas = [choice["delta"] for data in datas for choice in json.loads(data)["choices"]]
        text = "".join(delta.get("content") or "" for delta in deltas)
        assert text == expected_text(17)


READ_EVENTS_BODY = 'event: token\r\ndata: {"text":"é🚀"}\r\n\r\n: ping\n\ndata: two\rdata:lines\r\r'.encode()


@pytest.mark.parametrize("cut", range(len(READ_EVENTS_BODY) + 1))
def test_read_events_joins_what_the_network_cut(cut):
    pieces = [READ_EVENTS_BODY[:cut], READ_EVENTS_BODY[cut:]]
    assert list(read_events(pieces)) == [("token", '{"text":"é🚀"}'), ("message", "two\nlines")]


# --- step 4: EventSource, in Chromium -------------------------------------------------------------------


@pytest.fixture
def tab(browser, step4):
    """A Chromium page on step 4's page."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(step4.base_url + "/")
    yield page
    context.close()


def new_log_lines(example: Example, before: int, count: int) -> list[str]:
    """Wait until the access log has ``count`` lines after the first ``before``; return them."""
    deadline = time.monotonic() + 5
    while len(lines := example.log_lines()) < before + count and time.monotonic() < deadline:
        time.sleep(0.02)
    return lines[before:]


def test_step4_page_posts_the_prompt_then_reads_by_id(tab, step4):
    before = len(step4.log_lines())
    tab.get_by_role("textbox", name="Message").fill("my secret diagnosis [fake tokens=5]")
    tab.get_by_role("button", name="Ask").click()
    tab.locator('#answer[data-state="done"]').wait_for()
    assert tab.locator("#answer").text_content() == expected_text(5)
    posted, streamed = new_log_lines(step4, before, 2)
    run_id = re.fullmatch(r"GET /runs/([\w-]+)/stream HTTP/1.1 200 -", streamed)[1]
    assert posted == "POST /runs HTTP/1.1 201 -"
    assert "secret" not in "\n".join(step4.log_lines()[before:])
    assert len(run_id) == 16


def test_step4_prompt_in_a_url_lands_in_the_access_log(tab, step4):
    before = len(step4.log_lines())
    tab.evaluate(
        """(prompt) => new Promise((resolve) => {
            const source = new EventSource('/ask?q=' + encodeURIComponent(prompt));
            source.addEventListener('done', () => { source.close(); resolve(); });
        })""",
        "my secret diagnosis [fake tokens=2]",
    )
    (line,) = new_log_lines(step4, before, 1)
    assert line == "GET /ask?q=my%20secret%20diagnosis%20%5Bfake%20tokens%3D2%5D HTTP/1.1 200 -"


# An EventSource that is not closed on the last event, as the tutorials leave it: it records every
# event and every GET's outcome, until `stopAfter` answers have ended or the browser gives up.
OPEN_FOREVER = """async ({ url, post, stopAfter }) => {
    if (post) {
        const body = JSON.stringify({ messages: [{ role: 'user', content: post }] });
        const headers = { 'Content-Type': 'application/json' };
        const response = await fetch('/runs', { method: 'POST', headers, body });
        url = (await response.json()).stream_url;
    }
    const source = new EventSource(url);
    const seen = [];
    return new Promise((resolve) => {
        const end = () => { source.close(); resolve(seen); };
        for (const name of ['token', 'done']) {
            source.addEventListener(name, (e) => {
                seen.push(`${name} ${e.lastEventId}`);
                if (name === 'done' && seen.filter((s) => s.startsWith('done')).length === stopAfter) end();
            });
        }
        source.addEventListener('error', () => {
            seen.push(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
            if (source.readyState === EventSource.CLOSED) end();
        });
    });
}"""


def test_step4_reconnect_sends_last_event_id_and_204_stops_it(tab, step4, fake_upstream):
    before = len(step4.log_lines())
    seen = tab.evaluate(OPEN_FOREVER, {"url": None, "post": "hi [fake tokens=2 tag=t4-ours]", "stopAfter": 2})
    # The response ended after `done`; EventSource asked again with Last-Event-ID: 3, got 204, stopped.
    assert seen == ["token 1", "token 2", "done 3", "reconnecting", "closed"]
    posted, streamed, again = new_log_lines(step4, before, 3)
    run_id = re.fullmatch(r"GET /runs/([\w-]+)/stream HTTP/1.1 200 -", streamed)[1]
    assert again == f"GET /runs/{run_id}/stream HTTP/1.1 204 3"
    assert len(fake_upstream.requests("t4-ours")) == 1


def test_step4_without_204_eventsource_asks_the_model_again(tab, step4, fake_upstream):
    before = len(step4.log_lines())
    url = "/ask?q=" + "hi%20%5Bfake%20tokens%3D2%20tag%3Dt4-again%5D"
    seen = tab.evaluate(OPEN_FOREVER, {"url": url, "post": None, "stopAfter": 2})
    # The mistake: the stream ends with 200, so EventSource reconnects, and the model answers again.
    assert seen == ["token 1", "token 2", "done 3", "reconnecting", "token 1", "token 2", "done 3"]
    first, again = new_log_lines(step4, before, 2)
    assert (first, again) == (f"GET {url} HTTP/1.1 200 -", f"GET {url} HTTP/1.1 200 3")
    assert len(fake_upstream.requests("t4-again")) == 2


# --- step 5: the silent model and the closed tab ---------------------------------------------------------


class IdleProxy:
    """A loopback TCP proxy that cuts a connection silent for ``idle`` seconds, as proxies do."""

    def __init__(self, target_port: int, idle: float) -> None:
        self.target_port, self.idle = target_port, idle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self.threads = [threading.Thread(target=self._accept_one)]
        self.threads[0].start()

    def _accept_one(self) -> None:
        client, _ = self.listener.accept()
        with client, socket.create_connection(("127.0.0.1", self.target_port)) as server:
            peers = {client: server, server: client}
            while True:
                ready, _, _ = select.select(list(peers), [], [], self.idle)
                if not ready:
                    self.cuts += 1  # nothing either way for `idle` seconds: cut, like an idle timeout
                    return
                for side in ready:
                    data = side.recv(65536)
                    if not data:
                        return
                    peers[side].sendall(data)

    def close(self) -> None:
        """Stop accepting and wait for the connection's thread."""
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=10)


def test_a_proxy_idle_timeout_cuts_a_silent_model_unless_heartbeats(step1, step5):
    question = "hi [fake ttft=2 tokens=3]"  # silent for twice the proxy's idle timeout
    proxy = IdleProxy(step1.port, PROXY_IDLE_SECONDS)
    try:
        # The mistake: nothing to write until the first token, so the proxy cuts the connection.
        with pytest.raises(http.client.RemoteDisconnected):
            request(proxy.port, "POST", "/stream", ask(question))
    finally:
        proxy.close()
    assert proxy.cuts == 1
    proxy = IdleProxy(step5.port, PROXY_IDLE_SECONDS)
    try:
        body = request(proxy.port, "POST", "/stream", ask(question)).read()
    finally:
        proxy.close()
    assert proxy.cuts == 0
    assert body.startswith(HEARTBEAT * 3)
    assert body.replace(HEARTBEAT, b"") == frames(["Hello", ",", " world"])


def test_a_closed_tab_leaves_the_model_running_unless_heartbeats(step1, step5, fake_upstream):
    # The tab closes while the model thinks, before its first token.
    question = "hi [fake ttft=1 tokens=20 tps=100 tag={}]"
    client = open_raw(step1.port, question.format("t5-naive"))
    time.sleep(0.2)
    client.close()
    record = fake_upstream.wait_for_outcome("t5-naive", timeout=5)
    # The mistake: step 1 notices nobody is there only when a token fails to go out, and even then it
    # never closes the SDK's response: all 20 tokens were generated for nobody.
    assert (record["outcome"], record["tokens_sent"]) == ("completed", 20)
    client = open_raw(step5.port, question.format("t5-ours"))
    ping = b"8\r\n" + HEARTBEAT + b"\r\n"  # one chunk of the response body: a heartbeat
    assert recv_until(client, ping).endswith(b"\r\n\r\n" + ping)  # the head, then at once a ping
    client.close()
    # The next heartbeats fail to go out, the producer is killed, its `with` closes the upstream.
    record = fake_upstream.wait_for_outcome("t5-ours", timeout=5)
    assert (record["outcome"], record["tokens_sent"]) == ("client_closed", 0)


def test_breaking_out_of_the_sdk_stream_keeps_the_connection_open(fake_upstream, monkeypatch):
    client = openai.OpenAI(base_url=fake_upstream.base_url, api_key="fake", max_retries=0)
    question = [{"role": "user", "content": "hi [fake tokens=20 tps=40 tag=t5-break]"}]
    try:
        # The mistake: a `break` out of the loop, and nothing closes the response.
        stream = client.chat.completions.create(model="m", messages=question, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        time.sleep(0.2)
        assert fake_upstream.requests("t5-break")[0]["outcome"] is None  # still sending
        record = fake_upstream.wait_for_outcome("t5-break", timeout=5)
        assert (record["outcome"], record["tokens_sent"]) == ("completed", 20)
        stream.close()
        # Step 2's `answer`, left after its first token: its `with` closes the connection at once.
        monkeypatch.setattr(step2_wire_format, "client", client)
        question[0]["content"] = "hi [fake tokens=20 tps=40 tag=t5-with]"
        answer = step2_wire_format.answer(question)
        assert next(answer) == ("token", {"text": "Hello"})
        answer.close()
        record = fake_upstream.wait_for_outcome("t5-with", timeout=5)
        assert record["outcome"] == "client_closed" and record["tokens_sent"] < 20
    finally:
        client.close()


# --- step 6: runs -------------------------------------------------------------------------------------


def create_run(example: Example, content: str) -> dict:
    """POST /runs and return its JSON answer."""
    response = request(example.port, "POST", "/runs", ask(content))
    assert response.status == 201
    return json.loads(response.read())


def read_some(example: Example, run: dict, count: int) -> tuple[http.client.HTTPResponse, list]:
    """Open the run's stream and read its first ``count`` events; return the response and them."""
    response = request(example.port, "GET", run["stream_url"])
    assert response.status == 200
    return response, list(itertools.islice(read_events(chunks(response)), count))


def test_step6_resumes_after_last_event_id_without_asking_the_model_again(step6, fake_upstream):
    run = create_run(step6, "hi [fake tokens=10 tps=50 tag=t6-resume]")
    response, first = read_some(step6, run, 3)
    response.close()  # the connection drops after event 3
    assert first == [("token", json.dumps({"text": word})) for word in words(3)]
    resumed = request(step6.port, "GET", run["stream_url"], headers={"Last-Event-ID": "3"}).read()
    assert resumed.replace(HEARTBEAT, b"") == frames(words(10)[3:], first_id=4)
    assert status_of(step6.port, "GET", run["stream_url"], {"Last-Event-ID": "11"}) == 204
    assert len(fake_upstream.requests("t6-resume")) == 1


def test_step6_stop_ends_the_run_and_closes_the_upstream(step6, fake_upstream):
    run = create_run(step6, "hi [fake tokens=200 tps=50 tag=t6-stop]")
    response, _ = read_some(step6, run, 2)
    assert status_of(step6.port, "POST", run["stop_url"]) == 202
    rest = list(read_events(chunks(response)))
    assert rest[-1] == ("done", '{"finish_reason": "stopped"}')
    record = fake_upstream.wait_for_outcome("t6-stop")
    assert record["outcome"] == "client_closed" and record["tokens_sent"] < 200


def test_step6_a_run_left_unread_stops_after_the_grace_period(step6, fake_upstream):
    run = create_run(step6, "hi [fake tokens=200 tps=50 tag=t6-grace]")
    response, _ = read_some(step6, run, 1)
    response.close()
    left = time.time()
    record = fake_upstream.wait_for_outcome("t6-grace", timeout=5)
    assert record["outcome"] == "client_closed" and record["tokens_sent"] < 200
    # The model went on for the grace period, in case the reader came back, then was stopped.
    assert GRACE_SECONDS - 0.05 <= record["ended"] - left <= GRACE_SECONDS + 2


# --- the raw events view, and the tutorial itself -------------------------------------------------------


def test_raw_events_view_shows_each_frame(browser, page_server):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    context.set_default_timeout(WAIT_MS)
    try:
        page = context.new_page()
        page.goto(page_server.base_url + "/?mode=fetch")
        page.locator('#app[data-ready="true"]').wait_for()
        page.evaluate("() => { document.querySelector('#raw').open = true; }")
        page.get_by_role("textbox", name="Message", exact=True).fill("/demo echo Hi there! Streaming works.")
        page.get_by_role("button", name="Send", exact=True).click()
        page.locator('[data-role="assistant"][data-state="done"]').wait_for()
        rows = page.locator('#raw-list li[data-kind="event"]')
        assert rows.count() == 7  # start, five tokens, done
        assert 'data: {"text":" there!","tokens":1}' in rows.nth(2).text_content()
        if os.environ.get("UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=SCREENSHOT, animations="disabled")
    finally:
        context.close()


@pytest.mark.parametrize(
    "module", ["step1_relay", "step2_wire_format", "step4_eventsource", "step5_heartbeat", "step6_runs"]
)
def test_examples_import_without_side_effects(module):
    threads = threading.active_count()
    example = importlib.import_module(f"examples.{module}")
    assert isinstance(example.app, flask.Flask)
    assert threading.active_count() == threads  # nothing started: no server, no thread


def test_tutorial_quotes_the_examples_as_they_are():
    tutorial = TUTORIAL.read_text()
    sources = {path.name: path.read_text() for path in (ROOT / "examples").glob("step*")}
    for name in sources:
        assert f"examples/{name}" in tutorial, f"the tutorial never names examples/{name}"
    for block in re.findall(r"```(?:python|js)\n(.*?)```", tutorial, flags=re.DOTALL):
        assert any(block in source for source in sources.values()), f"not in any example:\n{block}"
