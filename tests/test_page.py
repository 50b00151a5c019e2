"""The chat page in a real headless Chromium, against the app under a real gunicorn (demo model).

Every behaviour that depends on the reader is tested in both modes (`fetch` and `eventsource`). The
page is found the way a person or a screen reader finds it: the textarea labelled "Message", the
buttons "Send" and "Stop", the radios "fetch reader" and "EventSource", the `role="log"`
conversation, and answers as `[data-role="assistant"]` with their `data-state`.

Fixtures (tests/conftest.py): `page_server` runs gunicorn with a steady demo model (200 tokens a
second, no jitter, 200 ms reconnects); `browser` is Debian's Chromium under Playwright, skipped
locally and failed in CI when missing. The dropped-connection tests put `CuttingProxy`, a small
loopback TCP proxy, between the browser and gunicorn. The accessibility audit runs axe-core from
tests/vendor/ (`npm ci --prefix tests/vendor`), skipped locally and failed in CI when missing.

Run them alone::

    python -m pytest tests/test_page.py -q

The README's screenshot (docs/screenshot.png) is written only when asked, so that running the tests
leaves the git tree clean::

    UPDATE_SCREENSHOT=1 python -m pytest tests/test_page.py -q -k screenshot
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import GunicornProcess

from fakeupstream import expected_text
from streamchat.protocol import FAIL_CODES
from streamchat.providers.demo import _MARKDOWN as DEMO_MARKDOWN

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

    def wait_until(self, answer, state: str, timeout: float = WAIT_MS) -> str:
        """Wait for the answer's final state and return its text (final once the state is set)."""
        # wait_for() watches the DOM and returns the moment the run ends; expect() would poll
        # with growing pauses. Then expect() checks which end it was, with a clear message.
        answer.and_(self.page.locator('[data-state]:not([data-state="streaming"])')).wait_for(timeout=timeout)
        expect(answer).to_have_attribute("data-state", state, timeout=0)
        return answer.locator('[data-role="text"]').text_content()


def open_tab(browser, contexts: list, **context_options) -> Tab:
    """Open a page of `browser` in a fresh context (own storage), added to `contexts` for closing."""
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


@pytest.fixture
def make_tab(browser):
    """Open browser pages in fresh contexts (own storage), closed after the test."""
    contexts = []
    yield lambda **context_options: open_tab(browser, contexts, **context_options)
    for context in contexts:
        context.close()


def tab_in(browser) -> Iterator[Tab]:
    """Yield a desktop-sized page of `browser` in a fresh context, then close it; fail the test if
    the page's script threw."""
    contexts = []
    tab = open_tab(browser, contexts)
    yield tab
    contexts[0].close()
    assert tab.errors == [], "uncaught errors in the page"


@pytest.fixture
def tab(browser) -> Iterator[Tab]:
    """A desktop-sized page; fails the test if the page's script threw."""
    yield from tab_in(browser)


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
        # Retry waits as long as the server asked, then can be pressed.
        expect(retry).to_be_disabled()
        expect(retry).to_be_enabled(timeout=3_000)
        first_run = answer.get_attribute("data-run-id")
        retry.click()
        # Retry replaces the failed answer with a new run (which fails the same way: same prompt).
        expect(tab.answers).to_have_count(1)
        expect(tab.answers.first).not_to_have_attribute("data-run-id", first_run)
        tab.wait_until(tab.answers.first, "failed")


# Untrusted text through the Markdown path: each line must show every one of its characters and run
# nothing; the only links are the http(s) and mailto ones, and the image is a link, never fetched.
XSS_LINES = [
    "<b>bold</b> stays as typed",
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<iframe src=javascript:alert(1)></iframe>",
    '<a href="javascript:alert(1)">a link in HTML</a>',
    "[click](javascript:alert(1))",
    "[data](data:text/html,<script>alert(1)</script>)",
    "<javascript:alert(1)>",
    "[relative](/runs)",
]
XSS_CORPUS = "\n\n".join(
    [
        *XSS_LINES,
        "![pixel](https://example.com/pixel.png)",
        "[ok](https://example.com/a) <mailto:me@example.com>",
    ]
)


@pytest.mark.parametrize("mode", MODES)
def test_page_shows_markup_in_answers_as_text(tab, page_server, mode):
    fetched = []
    tab.page.on("request", lambda request: "example.com" in request.url and fetched.append(request.url))
    tab.open(page_server.base_url, mode)
    answer = tab.ask(f"/demo echo {XSS_CORPUS}")
    assert tab.wait_until(answer, "done") == XSS_CORPUS
    assert answer.locator('[data-role="text"]').evaluate("element => element.childElementCount") == 0
    log = tab.page.get_by_role("log")
    assert log.locator("img, script, iframe, [style], [onerror]").count() == 0
    shown = answer.locator('[data-role="markdown"]').text_content()
    for line in XSS_LINES:
        assert line in shown
    links = log.locator("a").evaluate_all(
        "links => links.map(a => [a.getAttribute('href'), a.textContent, a.rel])"
    )
    rel = "noopener noreferrer nofollow"
    assert links == [
        ["https://example.com/pixel.png", "pixel", rel],
        ["https://example.com/a", "ok", rel],
        ["mailto:me@example.com", "mailto:me@example.com", rel],
    ]
    # The user's own message stays plain text.
    expect(tab.page.locator('[data-role="user"]')).to_have_text(f"/demo echo {XSS_CORPUS}")
    assert tab.page.locator('[data-role="user"] .bubble *').count() == 0
    assert tab.dialogs == [] and fetched == []


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
    # The strictest policy the page must live with: nothing inline, no style attribute, no import map.
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )

    def with_policy(route):
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": policy})

    tab.page.route(f"{page_server.base_url}/?mode={mode}", with_policy)
    tab.page.add_init_script(
        """window.violations = [];
        document.addEventListener('securitypolicyviolation', (event) => {
            window.violations.push(`${event.violatedDirective} ${event.blockedURI}`);
        });"""
    )
    tab.open(page_server.base_url, mode)
    # The page works, Markdown and all, and the policy refused nothing...
    assert tab.wait_until(tab.ask("/demo echo under CSP"), "done") == "under CSP"
    assert tab.wait_until(tab.ask("/demo markdown"), "done") == DEMO_MARKDOWN
    assert tab.page.evaluate("() => window.violations") == []
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


# The words of the answers' table cells that are laid out over two lines (a Range around a word
# that wraps has a box on each line).
WORDS_CUT_IN_TABLES = """() => {
    const cut = [];
    for (const cell of document.querySelectorAll('.markdown td, .markdown th')) {
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (const match of node.data.matchAll(/\\S+/g)) {
                const range = document.createRange();
                range.setStart(node, match.index);
                range.setEnd(node, match.index + match[0].length);
                if (range.getClientRects().length > 1) cut.push(match[0]);
            }
        }
    }
    return cut;
}"""


def test_page_fits_a_phone_screen(make_tab, page_server):
    tab = make_tab(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    tab.open(page_server.base_url, "fetch")
    tab.wait_until(tab.ask("/demo echo " + "a-long-unbroken-word-" * 12), "done")
    tab.wait_until(tab.ask("/demo markdown"), "done")  # a code block and a table, both wide
    width = tab.page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], "the page scrolls sideways"
    # The table scrolls inside its wrapper instead of cutting its words in two to fit.
    assert tab.page.evaluate(WORDS_CUT_IN_TABLES) == []
    for control in (tab.message, tab.button("Send"), tab.page.get_by_role("radio", name="EventSource")):
        expect(control).to_be_in_viewport()


def test_page_follows_the_colour_scheme(make_tab, page_server):
    colours = {}
    for scheme in ("light", "dark"):
        tab = make_tab(color_scheme=scheme)
        tab.open(page_server.base_url)
        colours[scheme] = tab.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert colours["light"] != colours["dark"]


@pytest.mark.skipif(
    os.environ.get("UPDATE_SCREENSHOT") != "1", reason="set UPDATE_SCREENSHOT=1 to rewrite it"
)
def test_page_screenshot_mid_stream(make_tab, page_server):
    """Save docs/screenshot.png (embedded in the README): an answer with code, then one streaming."""
    tab = make_tab(viewport={"width": 1280, "height": 960}, color_scheme="light")
    tab.open(page_server.base_url, "fetch")
    tab.wait_until(tab.ask("/demo markdown"), "done")
    answer = tab.ask("/demo long 2000")
    tab.page.wait_for_function(
        "() => Number(document.querySelector('[data-metric=\"tokens\"]').textContent) >= 60",
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


# --- Markdown ----------------------------------------------------------------------------------------------

# The code block of `/demo markdown`, as a Copy code button must copy it (no fence, no last newline).
DEMO_CODE = DEMO_MARKDOWN.split("```python\n", 1)[1].split("```", 1)[0].removesuffix("\n")
TOKENS_AT_LEAST = "n => Number(document.querySelector('[data-metric=\"tokens\"]').textContent) >= n"


def test_page_renders_markdown_beside_the_exact_source(tab, page_server):
    tab.open(page_server.base_url, "fetch")
    answer = tab.ask("/demo markdown")
    assert tab.wait_until(answer, "done") == DEMO_MARKDOWN
    rendered = answer.locator('[data-role="markdown"]')
    expect(rendered.locator("h2")).to_have_text("Reading a stream in the browser")
    expect(rendered.locator("strong")).to_have_text("bytes")
    expect(rendered.locator("em")).to_have_text("unfinished")
    expect(rendered.locator("ol > li")).to_have_count(3)
    expect(rendered.locator(".code-lang")).to_have_text("python")
    assert rendered.locator(".code-block code").text_content() == DEMO_CODE
    expect(rendered.get_by_role("button", name="Copy code")).to_be_visible()
    expect(rendered.locator("th")).to_have_text(["reader", "reconnects", "sees heartbeats"])
    classes = rendered.locator("th").evaluate_all("cells => cells.map(cell => cell.className)")
    assert classes == ["align-left", "align-center", "align-right"]
    link = rendered.get_by_role("link", name="MDN on readable streams")
    expect(link).to_have_attribute("href", "https://developer.mozilla.org/en-US/docs/Web/API/Streams_API")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(link).to_have_attribute("target", "_blank")
    assert tab.page.locator("[style]").count() == 0  # the CSP forbids inline style

    # The source is there, exact, and shown by the Source toggle in place of the Markdown.
    source, text = answer.get_by_role("button", name="Source"), answer.locator('[data-role="text"]')
    expect(text).to_be_hidden()
    expect(source).to_have_attribute("aria-pressed", "false")
    source.click()
    expect(text).to_be_visible()
    expect(rendered).to_be_hidden()
    expect(source).to_have_attribute("aria-pressed", "true")
    source.click()
    expect(rendered).to_be_visible()
    expect(text).to_be_hidden()


def test_page_shows_an_unclosed_code_fence_as_code_while_it_streams(tab, page_server):
    lines = [f"const v{i} = {i};" for i in range(60)]
    text = "Here is the code:\n\n```js\n" + "\n".join(lines)  # never closed
    tab.open(page_server.base_url, "fetch")
    # Every frame, count whether a line of code shows anywhere but in the code block.
    tab.page.evaluate(
        """() => {
            window.codeOutside = 0;
            window.codeFrames = 0;
            const tick = () => {
                const rendered = document.querySelector('[data-role="markdown"]');
                if (rendered !== null) {
                    for (const block of rendered.querySelectorAll(':scope > :not(.code-block)')) {
                        if (block.textContent.includes('const v')) window.codeOutside += 1;
                    }
                    if (rendered.querySelector('.code-block code')?.textContent.includes('const v')) {
                        window.codeFrames += 1;
                    }
                }
                requestAnimationFrame(tick);
            };
            requestAnimationFrame(tick);
        }"""
    )
    answer = tab.ask(f"/demo echo {text}")
    expect(answer.locator(".code-block code")).to_contain_text("const v5 = 5;")
    expect(answer).to_have_attribute("data-state", "streaming")  # mid-stream: already a code block
    expect(answer.locator(".code-lang")).to_have_text("js")
    assert tab.wait_until(answer, "done") == text
    assert answer.locator(".code-block code").text_content() == "\n".join(lines)
    assert tab.page.evaluate("() => window.codeOutside") == 0
    assert tab.page.evaluate("() => window.codeFrames") > 10


# An Answer (static/js/answer.js) in the page, its MarkdownView's update() recording each reading of
# the text (text, complete) before doing it: a frame while it streams, one more token, then the end.
READ_AN_ANSWER = """async (appUrl) => {
    const { Answer } = await import(new URL('answer.js', appUrl));
    const answer = new Answer();
    const reads = [];
    const update = answer.markdown.update.bind(answer.markdown);
    answer.markdown.update = (text, options) => {
        reads.push([text, options?.complete ?? false]);
        update(text, options);
    };
    answer.receive('# Title\\n', 1, '2');
    answer.flush();
    answer.receive('~', 1, '3');
    answer.finish('done', '');
    reads.push(answer.markdown.element.textContent);
    return reads;
}"""


def test_page_answer_reads_the_final_text_once_when_it_finishes(tab, page_server):
    tab.open(page_server.base_url)
    app_url = tab.page.locator('script[type="module"]').get_attribute("src")
    reads = tab.page.evaluate(READ_AN_ANSWER, f"{page_server.base_url}{app_url}")
    # The frame reads what streamed so far; the end reads the final text once, whole, so the last
    # line `~`, which a frame holds back (it may be the start of a code fence), shows.
    assert reads == [["# Title\n", False], ["# Title\n~", True], "Title\n~\n"]


def test_page_copy_copies_the_source_and_copy_code_the_code(make_tab, page_server):
    tab = make_tab(permissions=["clipboard-read", "clipboard-write"])
    tab.open(page_server.base_url, "fetch")
    answer = tab.ask("/demo markdown")
    tab.wait_until(answer, "done")
    answer.get_by_role("button", name="Copy", exact=True).click()
    expect(answer.get_by_role("button", name="Copied")).to_be_visible()
    assert tab.page.evaluate("() => navigator.clipboard.readText()") == DEMO_MARKDOWN
    answer.get_by_role("button", name="Copy code").click()
    expect(answer.locator(".code-head").get_by_role("button", name="Copied")).to_be_visible()
    assert tab.page.evaluate("() => navigator.clipboard.readText()") == DEMO_CODE
    assert tab.errors == []


def test_page_copy_selects_the_text_where_there_is_no_clipboard_api(make_tab, page_server):
    tab = make_tab()
    # As on plain http from another host: the Clipboard API does not exist there.
    tab.page.add_init_script("delete Navigator.prototype.clipboard;")
    tab.open(page_server.base_url, "fetch")
    answer = tab.ask("/demo markdown")
    tab.wait_until(answer, "done")
    answer.get_by_role("button", name="Copy code").click()
    expect(answer.get_by_role("button", name="Selected: press Ctrl+C")).to_be_visible()
    assert tab.page.evaluate("() => String(window.getSelection())") == DEMO_CODE
    # The answer's Copy selects its source, which it shows for that.
    answer.get_by_role("button", name="Copy", exact=True).click()
    expect(answer.locator('[data-role="text"]')).to_be_visible()
    expect(answer.get_by_role("button", name="Source")).to_have_attribute("aria-pressed", "true")
    assert tab.page.evaluate("() => String(window.getSelection())").rstrip("\n") == DEMO_MARKDOWN.rstrip("\n")
    assert tab.errors == []


def long_markdown(tokens: int) -> str:
    """Return a Markdown answer of exactly `tokens` demo tokens: prose, lists and code blocks."""
    sections = []
    for i in range(200):
        sections.append(
            f"## Step {i}\n\nEach step reads **one chunk** and carries the `tail` to the next read, "
            f"as the [spec](https://html.spec.whatwg.org/) says.\n\n- first point {i}\n- second point\n\n"
            f"```python\ndef step_{i}(chunk, tail):\n    lines = (tail + chunk).split('\\n')\n"
            f"    return lines[:-1], lines[-1]\n```\n\n"
        )
    return "".join(DEMO_TOKEN.findall("".join(sections))[:tokens])


def test_page_long_tasks_while_a_long_markdown_answer_streams(tab, page_server, capsys):
    """Measure (never assert) main-thread tasks over 50 ms while 4,000 tokens stream at 200/s."""
    text = long_markdown(4000)

    def with_max_tokens(route):
        # The page asks for the server's default max_tokens (1,024): this answer needs 4,000.
        body = route.request.post_data_json
        route.continue_(post_data=json.dumps({**body, "max_tokens": 4096}))

    tab.page.route(f"{page_server.base_url}/stream", with_max_tokens)
    tab.open(page_server.base_url, "fetch")
    tab.page.evaluate(
        """() => {
            window.longTasks = [];
            new PerformanceObserver((list) => {
                for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
            }).observe({ type: 'longtask' });
        }"""
    )
    answer = tab.ask(f"/demo echo {text}")
    assert tab.wait_until(answer, "done", timeout=60_000) == text
    assert answer.locator(".code-block").count() == text.count("```python")
    tasks = tab.page.evaluate("() => window.longTasks")
    with capsys.disabled():
        print(
            "\nlong tasks while a 4,000-token Markdown answer streamed at 200 tokens/s: "
            f"{len(tasks)} over 50 ms, longest {max(tasks, default=0):.0f} ms"
        )


# --- what a first-time user tripped over -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_page_keeps_each_outcome_in_view(make_tab, page_server, mode):
    tab = make_tab(viewport={"width": 390, "height": 640}, is_mobile=True, has_touch=True)
    tab.open(page_server.base_url, mode)
    filler = tab.ask("/demo echo " + "\n".join(f"line {i}" for i in range(40)))
    tab.wait_until(filler, "done")
    expect(filler.locator('[data-role="metrics"]')).to_be_in_viewport()
    answer = tab.ask("/demo fail rate_limited")
    tab.wait_until(answer, "failed")
    expect(answer.get_by_role("button", name="Retry")).to_be_in_viewport()
    expect(answer.locator('[data-role="note"]')).to_be_in_viewport()


def test_page_shows_a_failure_before_the_first_token_in_place_of_an_empty_bubble(tab, page_server):
    tab.open(page_server.base_url, "fetch")
    answer = tab.ask("/demo fail upstream_auth")
    tab.wait_until(answer, "failed")
    expect(answer.locator(".bubble")).to_be_hidden()
    expect(answer.get_by_role("button", name="Copy")).to_have_count(0)
    expect(answer.get_by_role("button", name="Source")).to_have_count(0)
    expect(answer.locator('[data-role="note"]')).to_have_text(FAIL_CODES["upstream_auth"][1])
    expect(answer.locator('[data-role="metrics"]')).to_have_text("")


def test_page_status_says_done_stopped_and_failed_and_counts_tokens_in_words(tab, page_server):
    pill = tab.page.locator("#connection")
    tab.open(page_server.base_url, "fetch")
    expect(pill).to_have_text("idle")
    one = tab.ask("/demo echo one")
    tab.wait_until(one, "done")
    expect(pill).to_have_text("done")
    expect(one.locator('[data-role="metrics"]')).to_contain_text(re.compile(r"^1 token · first token "))
    two = tab.ask("/demo echo one two")
    tab.wait_until(two, "done")
    expect(two.locator('[data-role="metrics"]')).to_contain_text(re.compile(r"^2 tokens · first token "))

    tab.wait_until(tab.ask("/demo fail upstream_auth"), "failed")
    expect(pill).to_have_text("failed")
    stopped = tab.ask("/demo long 1000")
    expect(stopped.locator('[data-role="text"]')).not_to_be_empty()
    tab.button("Stop").click()
    tab.wait_until(stopped, "stopped")
    expect(pill).to_have_text("stopped")


@pytest.mark.parametrize("typo", ["/demo foo", "/demo long abc", "/demo fail bogus"])
def test_page_demo_typo_answers_with_the_demo_commands(tab, page_server, typo):
    tab.open(page_server.base_url, "fetch")
    text = tab.wait_until(tab.ask(typo), "done")
    assert text.startswith(f"`{typo}` is not a demo command.")
    for command in ("/demo echo TEXT", "/demo long N", "/demo markdown", "/demo filter", "/demo fail CODE"):
        assert f"`{command}`" in text


@pytest.mark.parametrize("code", ["worker_lost", "shutdown", "store_unavailable"])
def test_page_shows_the_service_failures_as_retryable(tab, page_server, code):
    tab.open(page_server.base_url, "fetch")
    answer = tab.ask(f"/demo fail {code}")
    tab.wait_until(answer, "failed")
    expect(answer.locator('[data-role="note"]')).to_have_text(FAIL_CODES[code][1])
    expect(answer.get_by_role("button", name="Retry")).to_be_visible()


# --- accessibility -------------------------------------------------------------------------------------


def serious_violations(tab: Tab) -> list[dict]:
    """Run axe-core on the page as it is now and return its serious and critical violations."""
    found = tab.page.evaluate(
        """async () => {
            const { violations } = await axe.run(document, { resultTypes: ['violations'] });
            return violations.map((v) => ({
                id: v.id, impact: v.impact, targets: v.nodes.map((n) => n.target.join(' ')),
            }));
        }"""
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_page_has_no_serious_accessibility_violations(make_tab, page_server, axe_script, scheme):
    # bypass_csp: axe is added as a script of the test's, which a strict CSP would rightly refuse.
    tab = make_tab(color_scheme=scheme, bypass_csp=True)
    tab.open(page_server.base_url, "fetch")
    tab.page.add_script_tag(content=axe_script)
    expect(tab.page.locator("#raw")).to_have_attribute("open", "")  # the raw view, open on a wide screen
    assert serious_violations(tab) == [], "idle"

    tab.wait_until(tab.ask("/demo markdown"), "done")
    streaming = tab.ask("/demo long 1000")
    tab.page.wait_for_function(TOKENS_AT_LEAST, arg=20)
    assert serious_violations(tab) == [], "mid-stream"
    tab.button("Stop").click()
    tab.wait_until(streaming, "stopped")

    tab.wait_until(tab.ask("/demo fail rate_limited"), "failed")
    tab.answers.first.get_by_role("button", name="Source").click()
    assert serious_violations(tab) == [], "after an error, with a source view open"


def test_page_announces_an_answer_once_and_an_error_at_once(tab, page_server):
    tab.open(page_server.base_url, "fetch")
    expect(tab.page.get_by_role("log")).to_have_attribute("aria-live", "off")  # not token by token
    announce, alert = tab.page.locator("#announce"), tab.page.locator("#alert")
    tab.page.evaluate(
        """() => {
            window.announcements = 0;
            const count = (records) => { window.announcements += records.length; };
            const region = document.getElementById('announce');
            new MutationObserver(count).observe(region, { childList: true, characterData: true });
        }"""
    )
    answer = tab.ask("/demo long 300")
    tab.page.wait_for_function(TOKENS_AT_LEAST, arg=20)
    expect(announce).to_have_text("")
    text = tab.wait_until(answer, "done")
    expect(announce).to_have_text(text)
    assert tab.page.evaluate("() => window.announcements") == 1

    failed = tab.ask("/demo fail upstream_auth")
    expect(alert).to_have_text(FAIL_CODES["upstream_auth"][1])
    expect(failed).to_have_attribute("data-state", "failed")


def test_page_returns_focus_to_the_message_box_after_send_stop_and_retry(tab, page_server):
    tab.open(page_server.base_url, "fetch")
    answer = tab.ask("/demo long 1000")
    expect(tab.message).to_be_focused()
    expect(answer.locator('[data-role="text"]')).not_to_be_empty()
    tab.button("Stop").click()
    expect(tab.message).to_be_focused()
    tab.wait_until(answer, "stopped")

    failed = tab.ask("/demo fail rate_limited")
    tab.wait_until(failed, "failed")
    failed.get_by_role("button", name="Retry").click()
    expect(tab.message).to_be_focused()
    tab.wait_until(tab.answers.last, "failed")


# --- the conversation survives a reload ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_page_reload_mid_answer_finishes_the_answer_exactly_once(tab, page_server, mode):
    expected = "".join(f"Sentence {i} of an answer that outlives its page.\n" for i in range(40))
    tab.open(page_server.base_url, mode)
    tab.ask(f"/demo echo {expected}")
    tab.page.wait_for_function(TOKENS_AT_LEAST, arg=60)
    resumes = []
    tab.page.on(
        "request",
        lambda request: "/runs/" in request.url and "/stream" in request.url and resumes.append(request),
    )
    tab.page.reload(wait_until="domcontentloaded")
    expect(tab.page.locator("#app")).to_have_attribute("data-ready", "true")

    expect(tab.answers).to_have_count(1)
    assert tab.wait_until(tab.answers.first, "done") == expected
    assert tab.answers.first.locator('[data-role="markdown"]').text_content() == expected
    expect(tab.page.locator('[data-role="user"]')).to_have_count(1)
    expect(tab.page.locator('[data-metric="tokens"]')).to_have_text(str(len(DEMO_TOKEN.findall(expected))))
    # The first token came to the page before: the resume's own round trip is not shown as its time.
    expect(tab.page.locator('[data-metric="ttft"]')).to_have_text("–")
    expect(tab.answers.first.locator('[data-role="metrics"]')).not_to_contain_text("first token")
    # It picked the run up where the old page's text ended: after an event past the start.
    (resume,) = resumes
    if mode == "fetch":
        position = resume.header_value("last-event-id")
    else:
        position = resume.url.rsplit("last_event_id=", 1)[1]
    assert int(position) > 1

    # The restored conversation is the history of the next question.
    with tab.page.expect_request(stream_request) as request:
        tab.wait_until(tab.ask("/demo echo after the reload"), "done")
    assert request.value.post_data_json["messages"] == [
        {"role": "user", "content": f"/demo echo {expected}"},
        {"role": "assistant", "content": expected},
        {"role": "user", "content": "/demo echo after the reload"},
    ]
    # New conversation forgets it, reloads included.
    tab.button("New conversation").click()
    tab.page.reload(wait_until="domcontentloaded")
    expect(tab.page.locator("#app")).to_have_attribute("data-ready", "true")
    expect(tab.answers).to_have_count(0)
    expect(tab.page.locator("#empty-hint")).to_be_visible()


# --- the tab comes back: a page restored from the back/forward cache -------------------------------------
# (the fixture `browser_with_bfcache`, in conftest.py, is a Chromium that keeps the cache)


@pytest.fixture
def cached_tab(browser_with_bfcache) -> Iterator[Tab]:
    """A desktop-sized page that the back/forward cache can keep; fails the test if its script threw."""
    yield from tab_in(browser_with_bfcache)


def events_after(base_url: str, run_id: str, count: int, timeout: float = 5.0) -> None:
    """Wait (bounded) until the run has logged `count` more events than it has now, or has ended."""
    deadline = time.monotonic() + timeout
    start = run_status(base_url, run_id)["last_event_id"]
    while time.monotonic() < deadline:
        status = run_status(base_url, run_id)
        if status["last_event_id"] >= start + count or status["state"] != "running":
            return
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} logged fewer than {count} events in {timeout} s")


@pytest.mark.parametrize("mode", MODES)
def test_page_back_from_the_cache_mid_answer_finishes_the_answer_exactly_once(cached_tab, page_server, mode):
    tab = cached_tab
    expected = "".join(f"Sentence {i} of an answer whose tab went away and came back.\n" for i in range(40))
    # Each `pageshow` of each document this tab shows: `persisted` is true for one from the cache.
    tab.page.add_init_script("addEventListener('pageshow', (e) => (window.shows ??= []).push(e.persisted));")
    tab.open(page_server.base_url, mode)
    answer = tab.ask(f"/demo echo {expected}")
    tab.page.wait_for_function(TOKENS_AT_LEAST, arg=60)
    run_id = answer.get_attribute("data-run-id")
    requests = []
    tab.page.on("request", lambda request: "/runs" in request.url and requests.append(request))

    tab.page.goto(f"{page_server.base_url}/healthz")  # a link to another page of the site
    events_after(page_server.base_url, run_id, 20)  # text the page has not seen, for the resume to bring
    # A page from the cache fires no `load`, which go_back() waits for by default.
    tab.page.go_back(wait_until="commit")

    assert tab.wait_until(answer, "done") == expected
    assert tab.page.evaluate("window.shows") == [False, True], "the page was not restored from the cache"
    expect(tab.answers).to_have_count(1)
    assert answer.locator('[data-role="markdown"]').text_content() == expected
    expect(tab.page.locator('[data-metric="tokens"]')).to_have_text(str(len(DEMO_TOKEN.findall(expected))))
    # One resume of the same run, from where the page's text ended; no new run.
    (resume,) = requests
    assert resume.method == "GET" and f"/runs/{run_id}/stream" in resume.url
    if mode == "fetch":
        position = resume.header_value("last-event-id")
    else:
        position = resume.url.rsplit("last_event_id=", 1)[1]
    assert int(position) > 1
