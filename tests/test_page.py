"""The chat page in a real headless Chromium, against the app under a real gunicorn (demo model).

Every behaviour that depends on the reader is tested in both modes (`fetch` and `eventsource`). The
page is found the way a person or a screen reader finds it: the textarea labelled "Message", the
buttons "Send" and "Stop", the radios "fetch reader" and "EventSource", the `role="log"`
conversation, and answers as `[data-role="assistant"]` with their `data-state`.

Fixtures (tests/conftest.py): `page_server` runs gunicorn with a steady demo model (200 tokens a
second, no jitter, 200 ms reconnects); `browser` is Debian's Chromium under Playwright, skipped
locally and failed in CI when missing. The dropped-connection tests put `CuttingProxy`, a small
loopback TCP proxy, between the browser and gunicorn.

Run them alone::

    python -m pytest tests/test_page.py -q
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import GunicornProcess

from streamchat.fake_upstream import expected_text
from streamchat.providers.base import FAIL_CODES

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture then skips (or fails in CI) with the reason
    Page = expect = None

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "screenshot.png"
MODES = ["fetch", "eventsource"]
# Every wait in this file is bounded; most take milliseconds.
WAIT_MS = 10_000

# The demo model's tokenizer (streamchat/providers/demo.py): `/demo echo TEXT` streams TEXT in these
# pieces, one `token` event each, so the page's token count can be checked exactly.
DEMO_TOKEN = re.compile(r"\s*\S{1,6}|\s+")

if expect is not None:
    expect.set_options(timeout=WAIT_MS)


# --- helpers -------------------------------------------------------------------------------------------


@dataclass
class Tab:
    """One browser page with what it reported: dialogs, uncaught errors, console errors."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def open(self, base_url: str, mode: str | None = None) -> None:
        """Load the page (forcing a mode if given) and wait until its script has wired it."""
        self.page.goto(f"{base_url}/" + (f"?mode={mode}" if mode else ""), wait_until="domcontentloaded")
        expect(self.page.locator("#app")).to_have_attribute("data-ready", "true")

    @property
    def message(self):
        return self.page.get_by_role("textbox", name="Message", exact=True)

    @property
    def answers(self):
        return self.page.locator('[data-role="assistant"]')

    def button(self, name: str):
        return self.page.get_by_role("button", name=name, exact=True)

    def ask(self, text: str):
        """Type a message, press Send, and return the new answer's locator."""
        count = self.answers.count()
        self.message.fill(text)
        self.button("Send").click()
        expect(self.answers).to_have_count(count + 1)
        return self.answers.nth(count)

    def wait_until(self, answer, state: str) -> str:
        """Wait for the answer's final state and return its text (final once the state is set)."""
        # wait_for() watches the DOM and returns the moment the run ends; expect() would poll
        # with growing pauses. Then expect() checks which end it was, with a clear message.
        answer.and_(self.page.locator('[data-state]:not([data-state="streaming"])')).wait_for()
        expect(answer).to_have_attribute("data-state", state, timeout=0)
        return answer.locator('[data-role="text"]').text_content()


@pytest.fixture
def make_tab(browser):
    """Open browser pages in fresh contexts (own storage), closed after the test."""
    contexts = []

    def make(**context_options) -> Tab:
        context = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **context_options})
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        tab = Tab(context.new_page())

        def on_dialog(dialog):
            tab.dialogs.append(dialog.message)
            dialog.dismiss()

        tab.page.on("dialog", on_dialog)
        tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
        tab.page.on("console", lambda msg: msg.type == "error" and tab.console_errors.append(msg.text))
        return tab

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def tab(make_tab) -> Tab:
    """A desktop-sized page; fails the test if the page's script threw."""
    tab = make_tab()
    yield tab
    assert tab.errors == [], "uncaught errors in the page"


def run_status(base_url: str, run_id: str, until: str | None = None, timeout: float = 5.0) -> dict:
    """GET /runs/<id>; with `until`, poll until its state is that (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{base_url}/runs/{run_id}", timeout=5) as response:
            status = json.load(response)
        if until is None or status["state"] == until or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def stream_request(request) -> bool:
    """Whether a browser request starts a run (POST /stream, or POST /runs for EventSource)."""
    return request.method == "POST" and request.url.endswith(("/stream", "/runs"))


class CuttingProxy:
    """A loopback TCP proxy that cuts the first event-stream response after `cut_after` bytes.

    Every connection is relayed byte for byte in two threads. The first request for a stream
    (`POST /stream`, or `GET /runs/<id>/stream`) arms a cut on its connection: once `cut_after`
    bytes of the response (headers included) have been passed on, both sockets are closed, as a
    dropped mobile connection would be. Later requests, the resume among them, pass untouched.
    """

    STREAM_REQUEST = re.compile(rb"^(?:POST /stream|GET /runs/[^/ ]+/stream)[ ?]")
    LAST_EVENT_ID = re.compile(rb"^last-event-id: *(\S*)\r$", re.IGNORECASE | re.MULTILINE)

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts = 0
        # Each stream request seen: its request line and its Last-Event-ID (None if absent).
        self.stream_requests: list[tuple[bytes, bytes | None]] = []
        self._armed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._spawn(self._accept)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # the listener was closed: stop accepting
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            link = {"cut_at": None, "sent": 0}
            self._spawn(self._to_server, client, upstream, link)
            self._spawn(self._to_client, upstream, client, link)

    def _to_server(self, client: socket.socket, upstream: socket.socket, link: dict) -> None:
        try:
            while data := client.recv(65536):
                if self.STREAM_REQUEST.match(data):
                    last_id = self.LAST_EVENT_ID.search(data)
                    with self._lock:
                        self.stream_requests.append(
                            (data.split(b"\r\n", 1)[0], last_id.group(1) if last_id else None)
                        )
                        if not self._armed:
                            self._armed = True
                            link["cut_at"] = link["sent"] + self.cut_after
                upstream.sendall(data)
        except OSError:  # the other direction closed the sockets
            return

    def _to_client(self, upstream: socket.socket, client: socket.socket, link: dict) -> None:
        try:
            while data := upstream.recv(65536):
                cut_at = link["cut_at"]
                if cut_at is not None and link["sent"] + len(data) >= cut_at:
                    client.sendall(data[: cut_at - link["sent"]])
                    with self._lock:
                        self.cuts += 1
                    link["cut_at"] = None
                    for sock in (client, upstream):
                        close_now(sock)
                    return
                client.sendall(data)
                link["sent"] += len(data)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            return

    def stop(self) -> None:
        """Close every socket and wait for the relay threads."""
        close_now(self.listener)  # wakes the accept() that is waiting on it
        with self._lock:
            for sock in self._sockets:
                close_now(sock)
        for thread in self._threads:
            thread.join(timeout=5)


def close_now(sock: socket.socket) -> None:
    """Close a socket at once, even while another thread is blocked reading it."""
    # close() alone would wait for that read to return before the kernel lets go of the socket;
    # shutdown() wakes the reader and sends the FIN now.
    with contextlib.suppress(OSError):  # already closed, or never connected
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def cutting_proxy(page_server):
    """A CuttingProxy in front of page_server that drops the first stream after 1,500 bytes."""
    proxy = CuttingProxy(page_server.port, cut_after=1500)
    yield proxy
    proxy.stop()


# --- conversations -------------------------------------------------------------------------------------

# Newlines (blank lines too), leading spaces, tabs, markup, quotes, backslashes, non-ASCII, U+2028 and
# text that looks like SSE fields: each must come back exactly.
FIRST = "  two leading spaces\nline two\n\n\ttab-indented, after a blank line"
SECOND = (
    "<b>not bold</b> & \"double\" 'single' back\\slash 🚀 é 中文 \u2028 after U+2028\n"
    "data: not a field\nid: 99\n\n: not a comment\ntrailing newline\n"
)


@pytest.mark.parametrize("mode", MODES)
def test_page_streams_a_multi_turn_conversation_exactly(tab, page_server, mode):
    tab.open(page_server.base_url, mode)
    first = tab.ask(f"/demo echo {FIRST}")
    assert tab.wait_until(first, "done") == FIRST
    assert tab.page.locator('[data-metric="tokens"]').text_content() == str(len(DEMO_TOKEN.findall(FIRST)))

    with tab.page.expect_request(stream_request) as second_request:
        second = tab.ask(f"/demo echo {SECOND}")
    assert tab.wait_until(second, "done") == SECOND
    # The whole history went to the server: both user messages and the first answer.
    assert second_request.value.post_data_json["messages"] == [
        {"role": "user", "content": f"/demo echo {FIRST}"},
        {"role": "assistant", "content": FIRST},
        {"role": "user", "content": f"/demo echo {SECOND}"},
    ]
    assert first.locator('[data-role="text"]').text_content() == FIRST
    assert tab.page.get_by_role("log").locator('[data-role="assistant"]').count() == 2
    # A plain "stop" needs no note; the answer offers no Retry.
    expect(second.locator('[data-role="note"]')).to_be_hidden()
    expect(second.get_by_role("button", name="Retry")).to_have_count(0)


@pytest.mark.parametrize("mode", MODES)
def test_page_stop_ends_the_run_on_the_server(tab, page_server, mode):
    tab.open(page_server.base_url, mode)
    answer = tab.ask("/demo long 2000")  # ten seconds at 200 tokens a second
    expect(answer.locator('[data-role="text"]')).to_contain_text("Streaming an answer")
    expect(tab.button("Send")).to_have_count(0)
    with tab.page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/stop")) as stop:
        tab.button("Stop").click()
    text = tab.wait_until(answer, "stopped")

    # 202: the run was live when the page asked, so the page's POST is what stopped it.
    assert stop.value.status == 202
    status = run_status(page_server.base_url, answer.get_attribute("data-run-id"), until="stopped")
    assert status["state"] == "stopped"
    assert status["finish_reason"] == "stopped"
    assert len(text) > 0 and status["last_event_id"] < 2000
    expect(answer.locator('[data-role="note"]')).to_have_text("Stopped by you.")
    expect(tab.button("Send")).to_be_visible()


def test_page_shows_a_stalled_model_as_a_falling_rate(tab, page_server):
    # Nothing arrives during a stall (EventSource sees no heartbeats either), yet the rate falls.
    tab.open(page_server.base_url, "eventsource")
    answer = tab.ask("/demo fail stalled")  # a few tokens, then silence until the stall clock
    expect(answer.locator('[data-role="text"]')).not_to_be_empty()
    rate = tab.page.locator('[data-metric="rate"]')
    expect(rate).not_to_have_text("–")
    tab.page.wait_for_timeout(300)  # the last token is in
    before = float(rate.text_content())
    tab.page.wait_for_timeout(1500)
    assert float(rate.text_content()) < before
    tab.button("Stop").click()
    tab.wait_until(answer, "stopped")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("code", ["rate_limited", "upstream_auth", "connection_lost"])
def test_page_shows_each_error_with_retry_only_when_retryable(tab, page_server, mode, code):
    retryable, message = FAIL_CODES[code]
    tab.open(page_server.base_url, mode)
    answer = tab.ask(f"/demo fail {code}")
    tab.wait_until(answer, "failed")
    note = answer.locator('[data-role="note"]')
    expect(note).to_contain_text(message)
    expect(note).to_have_attribute("data-code", code)
    retry = answer.get_by_role("button", name="Retry")
    expect(retry).to_have_count(1 if retryable else 0)
    if code == "rate_limited":
        expect(note).to_contain_text("wait 2 s")  # the fail event's retry_after
        first_run = answer.get_attribute("data-run-id")
        retry.click()
        # Retry replaces the failed answer with a new run (which fails the same way: same prompt).
        expect(tab.answers).to_have_count(1)
        expect(tab.answers.first).not_to_have_attribute("data-run-id", first_run)
        tab.wait_until(tab.answers.first, "failed")


@pytest.mark.parametrize("mode", MODES)
def test_page_shows_markup_in_answers_as_text(tab, page_server, mode):
    corpus = "<img src=x onerror=alert(1)><script>alert(1)</script>\n<iframe src=javascript:alert(1)>"
    tab.open(page_server.base_url, mode)
    answer = tab.ask(f"/demo echo {corpus}")
    assert tab.wait_until(answer, "done") == corpus
    text = answer.locator('[data-role="text"]')
    assert text.evaluate("element => element.childElementCount") == 0
    assert tab.page.get_by_role("log").locator("img, script, iframe").count() == 0
    expect(tab.page.locator('[data-role="user"]')).to_have_text(f"/demo echo {corpus}")
    assert tab.dialogs == []


@pytest.mark.parametrize("mode", MODES)
def test_page_resumes_a_dropped_connection_without_duplicates(tab, page_server, cutting_proxy, mode):
    expected = "".join(f"Line {i}: résumé après la coupure, token {i * 7}.\n" for i in range(16))
    tab.open(cutting_proxy.base_url, mode)
    answer = tab.ask(f"/demo echo {expected}")
    assert tab.wait_until(answer, "done") == expected

    assert cutting_proxy.cuts == 1
    first, resume = cutting_proxy.stream_requests
    assert first[1] is None
    # The resume asked for what came after the last event the page had seen, and got only that:
    # the text is exact, and the token count adds up to the answer's, once.
    assert resume[0].startswith(b"GET /runs/") and int(resume[1]) > 1
    tokens = tab.page.locator('[data-metric="tokens"]')
    assert tokens.text_content() == str(len(DEMO_TOKEN.findall(expected)))


# --- the page itself -------------------------------------------------------------------------------------


def test_page_mode_survives_a_reload_and_the_query_forces_it(tab, page_server):
    fetch_radio = tab.page.get_by_role("radio", name="fetch reader")
    eventsource_radio = tab.page.get_by_role("radio", name="EventSource")
    tab.open(page_server.base_url)
    expect(fetch_radio).to_be_checked()  # the default

    eventsource_radio.check()
    tab.page.reload()
    expect(tab.page.locator("#app")).to_have_attribute("data-ready", "true")
    expect(eventsource_radio).to_be_checked()
    with tab.page.expect_request(stream_request) as request:
        tab.wait_until(tab.ask("/demo echo via EventSource"), "done")
    assert request.value.url.endswith("/runs")

    tab.open(page_server.base_url, "fetch")
    expect(fetch_radio).to_be_checked()
    with tab.page.expect_request(stream_request) as request:
        tab.wait_until(tab.ask("/demo echo via fetch"), "done")
    assert request.value.url.endswith("/stream")

    tab.open(page_server.base_url)  # ?mode= forced one page load; the saved choice is unchanged
    expect(eventsource_radio).to_be_checked()


@pytest.fixture
def two_model_server(fake_upstream):
    """gunicorn with the openai provider (the fake upstream) and two models to choose from."""
    with GunicornProcess(
        {
            "OPENAI_BASE_URL": fake_upstream.base_url,
            "OPENAI_API_KEY": "fake",
            "OPENAI_MODEL": "model-a",
            "ALLOWED_MODELS": "model-b",
        }
    ) as server:
        yield server


def test_page_offers_a_model_choice_only_when_there_are_several(tab, page_server, two_model_server):
    tab.open(page_server.base_url, "fetch")
    expect(tab.page.get_by_label("Model")).to_have_count(0)  # the demo server has one model

    tab.open(two_model_server.base_url, "fetch")
    choice = tab.page.get_by_label("Model")
    expect(choice.locator("option")).to_have_text(["model-a", "model-b"])
    choice.select_option("model-b")
    with tab.page.expect_request(stream_request) as request:
        answer = tab.ask("hello [fake tokens=6]")
    assert tab.wait_until(answer, "done") == expected_text(6)
    assert request.value.post_data_json["model"] == "model-b"


def test_page_enter_sends_and_shift_enter_adds_a_newline(tab, page_server):
    tab.open(page_server.base_url, "fetch")
    tab.message.click()
    tab.page.keyboard.type("/demo echo first line")
    tab.page.keyboard.press("Shift+Enter")
    tab.page.keyboard.type("second line")
    expect(tab.message).to_have_value("/demo echo first line\nsecond line")
    expect(tab.answers).to_have_count(0)

    tab.page.keyboard.press("Enter")
    assert tab.wait_until(tab.answers.first, "done") == "first line\nsecond line"
    expect(tab.message).to_have_value("")


@pytest.mark.parametrize("mode", MODES)
def test_page_works_under_a_strict_content_security_policy(tab, page_server, mode):
    policy = "default-src 'self'"

    def with_policy(route):
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": policy})

    tab.page.route(f"{page_server.base_url}/?mode={mode}", with_policy)
    tab.open(page_server.base_url, mode)
    # The page works, and the policy refused nothing...
    assert tab.wait_until(tab.ask("/demo echo under CSP"), "done") == "under CSP"
    assert [m for m in tab.console_errors if "Content Security Policy" in m] == []
    # ...while it was in force: an inline script added now is refused.
    tab.page.evaluate(
        """() => {
            const probe = document.createElement('script');
            probe.textContent = 'window.inlineScriptRan = true';
            document.body.append(probe);
        }"""
    )
    assert tab.page.evaluate("() => window.inlineScriptRan") is None
    assert any("Content Security Policy" in m for m in tab.console_errors)


def test_page_regenerates_copies_and_starts_a_new_conversation(make_tab, page_server):
    tab = make_tab(permissions=["clipboard-read", "clipboard-write"])
    tab.open(page_server.base_url, "fetch")
    answer = tab.ask("/demo echo copy me")
    tab.wait_until(answer, "done")
    first_run = answer.get_attribute("data-run-id")

    tab.button("Regenerate last answer").click()
    expect(tab.answers).to_have_count(1)
    expect(tab.answers.first).not_to_have_attribute("data-run-id", first_run)
    assert tab.wait_until(tab.answers.first, "done") == "copy me"

    tab.answers.first.get_by_role("button", name="Copy").click()
    expect(tab.answers.first.get_by_role("button", name="Copied")).to_be_visible()
    assert tab.page.evaluate("() => navigator.clipboard.readText()") == "copy me"

    tab.button("New conversation").click()
    expect(tab.answers).to_have_count(0)
    with tab.page.expect_request(stream_request) as request:
        tab.wait_until(tab.ask("/demo echo fresh"), "done")
    assert request.value.post_data_json["messages"] == [{"role": "user", "content": "/demo echo fresh"}]
    assert tab.errors == []


def test_page_explains_a_finish_reason_other_than_stop(tab, page_server):
    tab.open(page_server.base_url, "fetch")
    answer = tab.ask("/demo filter")
    tab.wait_until(answer, "done")
    expect(answer.locator('[data-role="note"]')).to_have_text("Stopped by the model server’s content filter.")


def test_page_fits_a_phone_screen(make_tab, page_server):
    tab = make_tab(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    tab.open(page_server.base_url, "fetch")
    tab.wait_until(tab.ask("/demo echo " + "a-long-unbroken-word-" * 12), "done")
    width = tab.page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], "the page scrolls sideways"
    for control in (tab.message, tab.button("Send"), tab.page.get_by_role("radio", name="EventSource")):
        expect(control).to_be_in_viewport()


def test_page_follows_the_colour_scheme(make_tab, page_server):
    colours = {}
    for scheme in ("light", "dark"):
        tab = make_tab(color_scheme=scheme)
        tab.open(page_server.base_url)
        colours[scheme] = tab.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert colours["light"] != colours["dark"]


def test_page_screenshot_mid_stream(make_tab, page_server):
    """Save docs/screenshot.png (embedded in the README): a finished answer, then one streaming."""
    tab = make_tab(viewport={"width": 1280, "height": 960}, color_scheme="light")
    tab.open(page_server.base_url, "fetch")
    tab.wait_until(tab.ask("How does the browser read a token stream?"), "done")
    answer = tab.ask("/demo long 2000")
    tab.page.wait_for_function(
        "() => Number(document.querySelector('[data-metric=\"tokens\"]').textContent) >= 80",
        timeout=WAIT_MS,
    )
    expect(answer).to_have_attribute("data-state", "streaming")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    # animations="disabled" shows the blinking caret in its visible phase.
    tab.page.screenshot(path=SCREENSHOT, animations="disabled")
    tab.button("Stop").click()
    tab.wait_until(answer, "stopped")
    assert SCREENSHOT.stat().st_size > 10_000
    assert tab.errors == []
