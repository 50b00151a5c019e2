"""Signing in to the page in a real headless Chromium, against gunicorn with an ACCESS_TOKEN.

With ACCESS_TOKEN set, the page shows a form (a password field labelled "Access token", a button
"Sign in") in the composer's place; the session cookie it gets back is HttpOnly, so both readers,
EventSource included, are tested through it. Found by role and label, as in tests/test_page.py, whose
`Tab` helper, page fixtures and axe-core runner these tests share. The server sends its own strict
Content-Security-Policy: every test that loads the page fails on a policy violation.

Run them alone::

    python -m pytest tests/test_page_sign_in.py -q
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from helpers import GunicornProcess, user
from test_page import WAIT_MS, Tab, serious_violations

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture then skips (or fails in CI) with the reason
    expect = None

TOKEN = "correct-horse-battery-staple-0123456789"  # 39 characters: the server wants 32 or more
WRONG_TOKEN = "incorrect-horse-battery-staple-987654321"
SAVED_CONVERSATION = "streamchat.conversation"  # static/js/saved-conversation.js
# The page's only way to learn of a policy violation; collected for the test to read.
COLLECT_VIOLATIONS = """window.violations = [];
document.addEventListener('securitypolicyviolation', (event) => {
    window.violations.push(`${event.violatedDirective} ${event.blockedURI}`);
});"""
PACE = {
    "DEMO_TOKENS_PER_SECOND": "200",
    "DEMO_FIRST_TOKEN_SECONDS": "0.05",
    "DEMO_JITTER": "0",
    "DISCONNECT_GRACE_SECONDS": "2",
}


@pytest.fixture(scope="module")
def token_server():
    """gunicorn with the demo model and ACCESS_TOKEN set."""
    with GunicornProcess({**PACE, "ACCESS_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def strict_server():
    """gunicorn with ACCESS_TOKEN, one failed sign-in a minute, and one live answer per client."""
    env = {**PACE, "ACCESS_TOKEN": TOKEN, "SESSION_RATE_LIMIT": "1/minute", "MAX_RUNS_PER_CLIENT": "1"}
    with GunicornProcess(env) as server:
        yield server


@pytest.fixture
def new_tab(browser):
    """Open browser pages in fresh contexts (own cookies and storage), closed after the test."""
    contexts = []

    def make(**context_options) -> Tab:
        context = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **context_options})
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        tab = Tab(context.new_page())
        tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
        return tab

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def signed_out(new_tab) -> Tab:
    """A page that needs signing in; fails the test on an uncaught error or a CSP violation."""
    tab = new_tab()
    tab.page.add_init_script(COLLECT_VIOLATIONS)
    yield tab
    assert tab.errors == [], "uncaught errors in the page"
    assert tab.page.evaluate("() => window.violations") == []


def token_field(tab: Tab):
    return tab.page.get_by_label("Access token", exact=True)


def sign_in(tab: Tab, token: str) -> None:
    """Type a token into the form and press Sign in."""
    token_field(tab).fill(token)
    tab.button("Sign in").click()


def saved_conversation(tab: Tab) -> str | None:
    return tab.page.evaluate("(key) => window.sessionStorage.getItem(key)", SAVED_CONVERSATION)


def test_page_sign_in_shows_the_form_and_says_a_token_is_wrong(signed_out, token_server):
    tab = signed_out
    tab.open(token_server.base_url)
    expect(tab.page.locator("#app")).to_have_attribute("data-sign-in", "needed")
    expect(token_field(tab)).to_have_attribute("type", "password")
    expect(token_field(tab)).to_be_focused()
    expect(tab.button("Sign in")).to_be_visible()
    # The chat is not usable: no message box, no Send, nothing to sign out of.
    expect(tab.message).to_be_hidden()
    expect(tab.button("Send")).to_be_hidden()
    expect(tab.button("Sign out")).to_be_hidden()

    with tab.page.expect_response(lambda r: r.url.endswith("/session")) as response:
        sign_in(tab, WRONG_TOKEN)
    assert response.value.status == 401
    expect(tab.page.get_by_role("alert").filter(has_text="access token")).to_have_text(
        "That access token is not right."
    )
    expect(token_field(tab)).to_be_focused()
    expect(token_field(tab)).to_have_attribute("aria-invalid", "true")
    expect(tab.message).to_be_hidden()
    assert tab.page.context.cookies() == []


FIELD_STYLE = """(field) => {
    const style = getComputedStyle(field);
    return [style.fontFamily, style.fontSize, style.padding, style.borderRadius, style.backgroundColor,
            style.color, style.borderColor];
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_page_text_fields_share_the_pages_look(new_tab, token_server, scheme):
    # The access token's field and the message's look alike, in the page's own font and colours,
    # not the browser's default field (a monospace or Arial face, square corners, grey in the dark).
    tab = new_tab(color_scheme=scheme)
    tab.open(token_server.base_url)
    token_look = token_field(tab).evaluate(FIELD_STYLE)
    assert tab.page.locator("#message").evaluate(FIELD_STYLE) == token_look  # hidden until signed in
    body = tab.page.evaluate(
        "() => [getComputedStyle(document.body).fontFamily, getComputedStyle(document.body).fontSize]"
    )
    font, size, _padding, radius, background, *_ = token_look
    assert [font, size] == body
    assert radius != "0px"
    surface = tab.page.evaluate(
        "() => getComputedStyle(document.documentElement).getPropertyValue('--surface').trim()"
    )
    assert surface, "the page defines no --surface colour"
    swatch = tab.page.evaluate(
        "(colour) => { const probe = document.createElement('i'); probe.style.color = colour;"
        " document.body.append(probe); const rgb = getComputedStyle(probe).color; probe.remove();"
        " return rgb; }",
        surface,
    )
    assert background == swatch


def test_page_sign_in_then_both_readers_work_and_sign_out_forgets(signed_out, token_server):
    tab = signed_out
    tab.open(token_server.base_url, "fetch")
    sign_in(tab, TOKEN)
    expect(tab.message).to_be_focused()
    expect(token_field(tab)).to_be_hidden()
    expect(token_field(tab)).to_have_value("")  # the page keeps no copy of the token
    (cookie,) = tab.page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
    assert TOKEN not in cookie["value"]

    assert tab.wait_until(tab.ask("/demo echo read with fetch"), "done") == "read with fetch"
    tab.page.get_by_role("radio", name="EventSource").check()  # the switch in the page's top bar
    with tab.page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/runs")):
        assert tab.wait_until(tab.ask("/demo echo read with EventSource"), "done") == "read with EventSource"
    # A reload keeps the session: the server says "done", and the conversation is still there.
    tab.page.reload(wait_until="domcontentloaded")
    expect(tab.page.locator("#app")).to_have_attribute("data-ready", "true")
    expect(tab.page.locator("#app")).to_have_attribute("data-sign-in", "done")
    expect(tab.answers).to_have_count(2)
    assert saved_conversation(tab) is not None

    # Sign out in the middle of an answer: the run is stopped, the conversation forgotten.
    streaming = tab.ask("/demo long 2000")
    expect(streaming).to_have_attribute("data-run-id", re.compile(r".+"))
    run_id = streaming.get_attribute("data-run-id")
    stops = []
    tab.page.on("request", lambda r: r.method == "POST" and r.url.endswith("/stop") and stops.append(r.url))
    tab.button("Sign out").click()
    expect(token_field(tab)).to_be_visible()
    expect(tab.page.get_by_role("alert").filter(has_text="signed out")).to_have_text("You are signed out.")
    expect(tab.answers).to_have_count(0)
    assert saved_conversation(tab) is None
    assert tab.page.context.cookies() == []
    # Stopped by the page's own stop request, at once: not by the grace period (2 s) after it left.
    assert run_state(token_server.base_url, run_id, until="stopped", timeout=1.0) == "stopped"
    assert stops == [f"{token_server.base_url}/runs/{run_id}/stop"]
    tab.page.reload(wait_until="domcontentloaded")
    expect(tab.page.locator("#app")).to_have_attribute("data-sign-in", "needed")
    expect(tab.answers).to_have_count(0)


@pytest.mark.parametrize("mode", ["fetch", "eventsource"])
def test_page_sign_in_asks_again_when_the_session_is_refused(signed_out, token_server, mode):
    tab = signed_out
    tab.open(token_server.base_url, mode)
    sign_in(tab, TOKEN)
    assert tab.wait_until(tab.ask("/demo echo before"), "done") == "before"
    # What a token changed on the server does to this browser: its cookie no longer counts.
    tab.page.context.clear_cookies()
    refused = tab.ask("/demo echo after")
    tab.wait_until(refused, "failed")
    expect(refused.locator('[data-role="note"]')).to_have_attribute("data-code", "unauthorized")
    expect(token_field(tab)).to_be_focused()
    expect(tab.page.get_by_role("alert").filter(has_text="Sign in again")).to_have_text(
        "You are signed out: the server no longer accepts this session. Sign in again."
    )
    expect(tab.message).to_be_hidden()

    sign_in(tab, TOKEN)
    tab.button("Regenerate last answer").click()
    assert tab.wait_until(tab.answers.last, "done") == "after"


def test_page_sign_in_says_how_long_to_wait_after_too_many_failures(new_tab, strict_server):
    tab = new_tab()
    tab.open(strict_server.base_url)
    sign_in(tab, WRONG_TOKEN)
    expect(tab.page.locator("#sign-in-message")).to_have_text("That access token is not right.")
    with tab.page.expect_response(lambda r: r.url.endswith("/session")) as response:
        sign_in(tab, WRONG_TOKEN)
    assert response.value.status == 429
    wait = int(response.value.headers["retry-after"])
    assert 1 <= wait <= 60
    seconds = "1 second" if wait == 1 else f"{wait} seconds"
    expect(tab.page.locator("#sign-in-message")).to_have_text(
        f"Too many failed sign-ins. Try again later. Wait {seconds} before trying again."
    )
    expect(tab.message).to_be_hidden()


def test_page_shows_a_refused_run_in_the_answers_place(new_tab, strict_server):
    # One live answer per client: a second one, while the first streams, is refused with a 429.
    created = httpx.post(
        f"{strict_server.base_url}/runs", json=user("/demo long 2000"), headers=bearer(), timeout=5
    )
    assert created.status_code == 201
    try:
        tab = new_tab(extra_http_headers=bearer())
        tab.open(strict_server.base_url, "fetch")
        refused = tab.ask("/demo echo one too many")
        tab.wait_until(refused, "failed")
        note = refused.locator('[data-role="note"]')
        expect(note).to_have_attribute("data-code", "too_many_active_runs")
        expect(note).to_have_text(
            "This client already has 1 live answers, the most it may have at once. "
            "Stop one, or wait for one to finish."
        )
    finally:
        stop = f"{strict_server.base_url}/runs/{created.json()['id']}/stop"
        httpx.post(stop, headers=bearer(), timeout=5)


def test_page_sign_in_form_has_no_serious_accessibility_violations(new_tab, token_server, axe_script):
    # bypass_csp: axe is added as a script of the test's, which the server's CSP rightly refuses.
    tab = new_tab(bypass_csp=True)
    tab.open(token_server.base_url)
    tab.page.add_script_tag(content=axe_script)
    assert serious_violations(tab) == [], "the form"
    sign_in(tab, WRONG_TOKEN)
    expect(tab.page.locator("#sign-in-message")).not_to_be_empty()
    assert serious_violations(tab) == [], "the form saying the token is wrong"


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def run_state(base_url: str, run_id: str, until: str, timeout: float = 5.0) -> str:
    """Poll GET /runs/<id> (bounded) until its state is `until`; return the last state seen."""
    deadline = time.monotonic() + timeout
    while True:
        state = httpx.get(f"{base_url}/runs/{run_id}", headers=bearer(), timeout=5).json()["state"]
        if state == until or time.monotonic() > deadline:
            return state
        time.sleep(0.05)
