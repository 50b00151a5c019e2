"""The request guards in-process (Flask test client): host, origin, auth, body, limits, in that order.

Also, as plain units: the memory store's retained-events limit and the log's redaction. Each setting
of "Putting it on the internet" (docs/deployment.md) has tests here that fail without it; what needs a
real socket (body and send timeouts, a broken chunked body, start-up refusals, a worker's death) is in
tests/test_hardening_service.py.
"""

from __future__ import annotations

import logging
import sys
import time

import gevent
import pytest
from helpers import FAST_DEMO, answer_text, make_store, parse_sse, user

from app import create_app
from streamchat.browser_headers import CONTENT_SECURITY_POLICY
from streamchat.guards import host_name
from streamchat.protocol import HTTP_ERROR_CODES
from streamchat.quotas import seconds_to_utc_midnight
from streamchat.redact import RedactingFilter, redact, upstream_text
from streamchat.session import COOKIE_NAME, cookie_value

TOKEN = "t" * 40
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# A demo answer that takes seconds, so that its run is still live while a test looks at it.
LONG = "/demo long 4000"
SLOW = {"demo_tokens_per_second": 50.0, "disconnect_grace_seconds": 60.0}


def make_client(**overrides):
    """Return a test client of the app with the fast demo model and these settings."""
    return create_app({**FAST_DEMO, **overrides}).test_client()


def error_of(response) -> tuple[int, str]:
    """Return a refusal's status and its error code."""
    return response.status_code, response.get_json()["error"]["code"]


def wait_until_finished(client, run_id: str, headers: dict | None = None) -> dict:
    """Let the producer run until the run has ended; return its status."""
    for _ in range(500):
        status = client.get(f"/runs/{run_id}", headers=headers).get_json()
        if status["state"] != "running":
            return status
        gevent.sleep(0.01)
    raise AssertionError(f"run {run_id} did not finish: {status}")


def stop_all(client, run_ids: list[str], headers: dict | None = None) -> None:
    """Stop live runs and let their producers end, so that no greenlet outlives the test."""
    for run_id in run_ids:
        client.post(f"/runs/{run_id}/stop", headers=headers)
    for run_id in run_ids:
        wait_until_finished(client, run_id, headers)


# --- host ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8000", "localhost"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("chat.example.com", "chat.example.com"),
    ],
)
def test_host_name_drops_the_port(host, name):
    assert host_name(host) == name


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:5000", "[::1]:8000"])
def test_host_loopback_names_are_served_by_default(host):
    client = make_client()
    assert client.post("/runs", json=user("hi"), headers={"Host": host}).status_code == 201


@pytest.mark.parametrize("host", ["attacker-rebound.example", "attacker-rebound.example:8000", "10.0.0.5"])
def test_host_any_other_name_is_a_400_bad_host(host):
    client = make_client()
    response = client.post("/runs", json=user("hi"), headers={"Host": host})
    assert error_of(response) == (400, "bad_host")
    assert client.get("/", headers={"Host": host}).status_code == 400


def test_host_healthz_answers_any_host_for_load_balancers():
    client = make_client()
    assert client.get("/healthz", headers={"Host": "10.0.0.5:8000"}).status_code == 200


def test_host_allowed_hosts_and_bind_add_names():
    listed = make_client(allowed_hosts="chat.example.com, Other.example")
    assert listed.get("/", headers={"Host": "chat.example.com:443"}).status_code == 200
    assert listed.get("/", headers={"Host": "other.example"}).status_code == 200
    # A list replaces the default.
    assert error_of(listed.get("/", headers={"Host": "localhost"})) == (400, "bad_host")
    bound = make_client(bind="192.168.1.20:8000")
    assert bound.get("/", headers={"Host": "192.168.1.20:8000"}).status_code == 200
    assert make_client(allowed_hosts="*").get("/", headers={"Host": "any.example"}).status_code == 200


# --- origin -------------------------------------------------------------------------------------------


def test_origin_same_origin_post_is_accepted():
    client = make_client()
    headers = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/runs", json=user("hi"), headers=headers).status_code == 201


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://localhost:8001"},  # another port is another origin
        {"Origin": "https://localhost"},  # another scheme too
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_origin_cross_origin_post_and_delete_are_403(headers):
    client = make_client()
    assert error_of(client.post("/runs", json=user("hi"), headers=headers)) == (403, "cross_origin")
    assert error_of(client.post("/stream", json=user("hi"), headers=headers)) == (403, "cross_origin")
    assert error_of(client.delete("/session", headers=headers)) == (403, "cross_origin")


def test_origin_reads_are_not_checked_and_no_cors_headers_by_default():
    client = make_client()
    response = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


def test_origin_listed_origins_are_accepted_and_answered_with_cors():
    client = make_client(allowed_origins="https://app.example.com")
    origin = {"Origin": "https://app.example.com", "Sec-Fetch-Site": "cross-site"}
    response = client.post("/runs", json=user("hi"), headers=origin)
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Vary"] == "Origin"
    preflight = client.options("/runs", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, Last-Event-ID"
    other = client.post("/runs", json=user("hi"), headers={"Origin": "https://evil.example"})
    assert error_of(other) == (403, "cross_origin")


def test_origin_behind_a_proxy_uses_the_forwarded_scheme():
    client = make_client(proxy_hops=1)
    headers = {"Origin": "https://localhost", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    assert client.post("/runs", json=user("hi"), headers=headers).status_code == 201
    plain = {"Origin": "http://localhost", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    assert error_of(client.post("/runs", json=user("hi"), headers=plain)) == (403, "cross_origin")


# --- auth ---------------------------------------------------------------------------------------------

API_ROUTES = [
    ("post", "/stream"),
    ("post", "/runs"),
    ("get", "/runs/RUN"),
    ("get", "/runs/RUN/stream"),
    ("post", "/runs/RUN/stop"),
]
WRONG_CREDENTIALS = {
    "none": {},
    "wrong token": {"Authorization": f"Bearer {'x' * 40}"},
    "no Bearer scheme": {"Authorization": TOKEN},
    "Basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "empty bearer": {"Authorization": "Bearer "},
    "wrong cookie": {"Cookie": f"{COOKIE_NAME}={cookie_value('y' * 40)}"},
    "the token as cookie": {"Cookie": f"{COOKIE_NAME}={TOKEN}"},
}


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
@pytest.mark.parametrize("credentials", WRONG_CREDENTIALS.values(), ids=WRONG_CREDENTIALS.keys())
def test_auth_every_api_route_needs_the_token(method, path, credentials):
    client = make_client(access_token=TOKEN)
    response = getattr(client, method)(path, json=user("hi"), headers=credentials)
    assert error_of(response) == (401, "unauthorized")


def test_auth_bearer_token_opens_every_api_route():
    client = make_client(access_token=TOKEN)
    run_id = client.post("/runs", json=user("hi"), headers=BEARER).get_json()["id"]
    assert wait_until_finished(client, run_id, BEARER)["state"] == "done"
    assert client.get(f"/runs/{run_id}/stream", headers=BEARER).status_code == 200
    assert client.post(f"/runs/{run_id}/stop", headers=BEARER).status_code == 200
    assert client.post("/stream", json=user("hi"), headers=BEARER).status_code == 200


@pytest.mark.parametrize("path", ["/", "/static/js/app.js", "/healthz", "/openapi.json"])
def test_auth_page_static_health_and_openapi_load_without_the_token(path):
    client = make_client(access_token=TOKEN)
    response = client.get(path)
    response.close()  # a static file's response holds the file open until closed
    assert response.status_code == 200


def test_auth_page_says_whether_sign_in_is_needed():
    assert make_client().get("/").status_code == 200
    app = create_app({**FAST_DEMO, "access_token": TOKEN})
    with app.test_request_context("/"):
        from streamchat.guards import sign_in_state

        assert sign_in_state() == "needed"
    with app.test_request_context("/", headers=BEARER):
        assert sign_in_state() == "done"
    with create_app(FAST_DEMO).test_request_context("/"):
        assert sign_in_state() == "off"


def test_session_cookie_flow_signs_in_and_out():
    client = make_client(access_token=TOKEN)
    response = client.post("/session", json={"token": TOKEN})
    assert response.status_code == 204
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}={cookie_value(TOKEN)};")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie.split("; ")
    assert "Secure" not in cookie.split("; ")  # plain http
    assert TOKEN not in cookie
    assert client.post("/runs", json=user("hi")).status_code == 201  # the cookie, no header
    signed_out = client.delete("/session")
    assert signed_out.status_code == 204
    assert f"{COOKIE_NAME}=;" in signed_out.headers["Set-Cookie"]
    assert error_of(client.post("/runs", json=user("hi"))) == (401, "unauthorized")


def test_session_cookie_is_secure_over_https_as_the_proxy_says():
    client = make_client(access_token=TOKEN, proxy_hops=1)
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    response = client.post("/session", json={"token": TOKEN}, headers=headers)
    assert "Secure" in response.headers["Set-Cookie"].split("; ")


def test_session_changing_the_token_signs_everyone_out():
    old = make_client(access_token=TOKEN)
    old.post("/session", json={"token": TOKEN})
    cookie = old.get_cookie(COOKIE_NAME).value
    new = make_client(access_token="n" * 40)
    new.set_cookie(COOKIE_NAME, cookie)
    assert error_of(new.post("/runs", json=user("hi"))) == (401, "unauthorized")
    # Another worker or host with the same token accepts it: nothing else is shared.
    same = make_client(access_token=TOKEN)
    same.set_cookie(COOKIE_NAME, cookie)
    assert same.post("/runs", json=user("hi")).status_code == 201


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"token": "wrong"}, 401, "unauthorized"),
        ({}, 400, "missing_field"),
        ({"token": 5}, 400, "invalid_field"),
        ({"token": TOKEN, "extra": 1}, 400, "unknown_field"),
        ([TOKEN], 400, "invalid_body"),
    ],
)
def test_session_wrong_or_malformed_sign_in_is_refused(body, status, code):
    client = make_client(access_token=TOKEN)
    response = client.post("/session", json=body)
    assert error_of(response) == (status, code)
    assert "Set-Cookie" not in response.headers


def test_session_failed_sign_ins_are_rate_limited_per_client():
    client = make_client(access_token=TOKEN, session_rate_limit="3/minute")
    for _ in range(3):
        assert client.post("/session", json={"token": "wrong"}).status_code == 401
    refused = client.post("/session", json={"token": TOKEN})  # even the right one, now
    assert error_of(refused) == (429, "too_many_requests")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Per client: another address, on the same server, is told its token is wrong, not to wait.
    elsewhere = {"REMOTE_ADDR": "10.0.0.2"}
    assert client.post("/session", json={"token": "wrong"}, environ_base=elsewhere).status_code == 401
    other = make_client(access_token=TOKEN, session_rate_limit="3/minute")
    # Successful sign-ins cost nothing.
    for _ in range(5):
        assert other.post("/session", json={"token": TOKEN}).status_code == 204


# --- the order: host, origin, auth, body, limits ----------------------------------------------------


def test_order_each_check_wins_over_the_ones_after_it():
    client = make_client(access_token=TOKEN, rate_limit="1/minute")
    bad_body = {"messages": []}
    evil = {"Host": "evil.example", "Origin": "http://evil.example"}
    assert error_of(client.post("/runs", json=bad_body, headers=evil)) == (400, "bad_host")
    cross = {"Origin": "http://evil.example"}
    assert error_of(client.post("/runs", json=bad_body, headers=cross)) == (403, "cross_origin")
    assert error_of(client.post("/runs", json=bad_body)) == (401, "unauthorized")
    assert client.post("/runs", json=user("hi"), headers=BEARER).status_code == 201
    # Over the rate limit now, but a bad body is still told as a bad body.
    assert error_of(client.post("/runs", json=bad_body, headers=BEARER)) == (400, "invalid_field")
    assert error_of(client.post("/runs", json=user("hi"), headers=BEARER)) == (429, "too_many_requests")


# --- limits -------------------------------------------------------------------------------------------


def test_rate_limit_429_with_retry_after_at_n_plus_one_counting_both_routes():
    client = make_client(rate_limit="3/minute")
    assert client.post("/runs", json=user("hi")).status_code == 201
    assert client.post("/stream", json=user("hi")).status_code == 200
    assert client.post("/runs", json=user("hi")).status_code == 201
    refused = client.post("/stream", json=user("hi"))
    assert error_of(refused) == (429, "too_many_requests")
    assert refused.get_json()["error"]["message"] == "At most 3 runs a minute per client."
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert error_of(client.post("/runs", json=user("hi"))) == (429, "too_many_requests")


def test_rate_limit_only_runs_that_start_use_up_quota():
    client = make_client(rate_limit="2/minute")
    for _ in range(5):
        assert client.post("/runs", json={"messages": []}).status_code == 400
        assert client.post("/runs", data="{}", content_type="text/plain").status_code == 415
    assert client.post("/runs", json=user("hi")).status_code == 201
    assert client.post("/runs", json=user("hi")).status_code == 201
    assert client.post("/runs", json=user("hi")).status_code == 429


def test_rate_limit_zero_is_off():
    client = make_client(rate_limit="0")
    for _ in range(40):
        assert client.post("/runs", json=user("hi")).status_code == 201


def test_rate_limit_counts_the_forwarded_client_only_behind_a_trusted_proxy():
    direct = make_client(rate_limit="1/minute")
    assert (
        direct.post("/runs", json=user("hi"), headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 201
    )
    # Nothing in front: a client cannot pick a new address for itself.
    refused = direct.post("/runs", json=user("hi"), headers={"X-Forwarded-For": "198.51.100.2"})
    assert error_of(refused) == (429, "too_many_requests")
    proxied = make_client(rate_limit="1/minute", proxy_hops=1)
    for client_address in ("198.51.100.1", "198.51.100.2"):
        headers = {"X-Forwarded-For": client_address}
        assert proxied.post("/runs", json=user("hi"), headers=headers).status_code == 201
    again = proxied.post("/runs", json=user("hi"), headers={"X-Forwarded-For": "198.51.100.1"})
    assert error_of(again) == (429, "too_many_requests")


def slots_of(client):
    """The client slots of the app behind a test client (quotas.ClientSlots)."""
    return client.application.extensions["streamchat.guards"].slots


def test_max_runs_per_client_429_at_n_plus_one_and_a_stop_frees_a_slot():
    client = make_client(max_runs_per_client=2, **SLOW)
    runs = [client.post("/runs", json=user(LONG)).get_json()["id"] for _ in range(2)]
    try:
        assert error_of(client.post("/runs", json=user(LONG))) == (429, "too_many_active_runs")
        assert error_of(client.post("/stream", json=user(LONG))) == (429, "too_many_active_runs")
        client.post(f"/runs/{runs[0]}/stop")
        wait_until_finished(client, runs[0])
        gevent.sleep(0.05)  # the producer's end releases the slot, in its own greenlet
        # Released by the run's end itself, not only found free when the client looked full.
        assert slots_of(client).held("127.0.0.1") == 1
        runs.append(client.post("/runs", json=user(LONG)).get_json()["id"])
        assert error_of(client.post("/runs", json=user(LONG))) == (429, "too_many_active_runs")
    finally:
        stop_all(client, runs)


@pytest.mark.parametrize("ending", ["done", "fail", "deadline"])
def test_max_runs_per_client_slot_is_freed_however_the_run_ends(ending):
    content = {"done": "hi", "fail": "/demo fail upstream_error", "deadline": LONG}[ending]
    client = make_client(max_runs_per_client=1, max_run_seconds=0.2, **SLOW)
    run_id = client.post("/runs", json=user(content)).get_json()["id"]
    wait_until_finished(client, run_id)
    gevent.sleep(0.05)
    assert slots_of(client).held("127.0.0.1") == 0  # released by the run's end
    second = client.post("/runs", json=user("hi"))
    assert second.status_code == 201, second.get_json()
    wait_until_finished(client, second.get_json()["id"])


def test_max_runs_per_client_a_start_refused_by_the_store_gives_its_slot_back():
    client = create_app({**FAST_DEMO, "max_runs_per_client": 2, "max_active_runs": 1, **SLOW}).test_client()
    slots = slots_of(client)
    first = client.post("/runs", json=user(LONG)).get_json()["id"]
    try:
        assert slots.held("127.0.0.1") == 1
        # Admitted by the client's limit (one slot of two is free), then refused by the worker's.
        for _ in range(3):
            assert error_of(client.post("/runs", json=user(LONG))) == (503, "too_many_runs")
        assert slots.held("127.0.0.1") == 1  # no reservation left behind
    finally:
        stop_all(client, [first])
    gevent.sleep(0.05)
    assert slots.held("127.0.0.1") == 0


def test_budget_a_run_that_crosses_it_finishes_then_new_runs_get_429():
    client = make_client(daily_token_budget=5)
    events = parse_sse(client.post("/stream", json={**user("hi"), "max_tokens": 20}).get_data())
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["finish_reason"] == "length"  # not cut at the budget
    assert events[-1]["data"]["usage"]["completion_tokens"] == 20
    assert len(answer_text(events)) > 0
    gevent.sleep(0.05)  # the producer's end charges the budget, in its own greenlet
    refused = client.post("/runs", json=user("hi"))
    assert error_of(refused) == (429, "budget_exhausted")
    expected = seconds_to_utc_midnight()
    assert abs(int(refused.headers["Retry-After"]) - expected) <= 2


def test_budget_zero_is_unlimited():
    client = make_client(daily_token_budget=0)
    for _ in range(3):
        client.post("/stream", json={**user("hi"), "max_tokens": 100}).get_data()
    assert client.post("/runs", json=user("hi")).status_code == 201


def test_deadline_ends_a_long_run_with_deadline_exceeded_and_keeps_the_text():
    client = make_client(max_run_seconds=0.3, **SLOW)
    started = time.monotonic()
    events = parse_sse(client.post("/stream", json=user(LONG)).get_data())
    assert time.monotonic() - started < 3
    assert events[-1]["event"] == "fail"
    assert events[-1]["data"] == {
        "code": "deadline_exceeded",
        "message": "The answer took longer than this server allows and was ended.",
        "retryable": False,
    }
    assert answer_text(events)  # the text so far is kept
    status = client.get(f"/runs/{events[0]['data']['run']}").get_json()
    assert (status["state"], status["code"]) == ("failed", "deadline_exceeded")


# --- browser hardening ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/", 200),
        ("get", "/static/js/app.js", 200),
        ("get", "/healthz", 200),
        ("get", "/nowhere", 404),
        ("post", "/runs", 415),
        ("post", "/stream", 200),
    ],
)
def test_headers_every_response_carries_csp_nosniff_and_no_referrer(method, path, status):
    client = make_client()
    response = (
        getattr(client, method)(path, json=user("hi")) if path == "/stream" else getattr(client, method)(path)
    )
    response.close()  # a static file's response holds the file open until closed
    assert response.status_code == status
    assert response.headers["Content-Security-Policy"] == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_protocol_names_every_guard_code():
    codes = {
        "bad_host",
        "cross_origin",
        "unauthorized",
        "request_timeout",
        "malformed_body",
        "too_many_requests",
        "too_many_active_runs",
        "budget_exhausted",
    }
    assert codes <= HTTP_ERROR_CODES
    assert "rate_limited" not in HTTP_ERROR_CODES  # the fail code of an upstream that limits us


# --- what a client must not exhaust, and what the log must not hold (units) -----------------------------


def finished_run(store, tokens: int) -> str:
    """Create a run in ``store`` with a start event, ``tokens`` tokens and a done event."""
    run_id = store.create("demo")
    store.append(run_id, "start", {"run": run_id, "model": "demo"})
    for _ in range(tokens):
        store.append_token(run_id, "x", 1)
    store.finish(run_id, "done", {"finish_reason": "stop"})
    return run_id


def test_retained_events_oldest_finished_runs_are_forgotten_first():
    store = make_store(retained_events_limit=25)
    first, second = finished_run(store, 8), finished_run(store, 8)  # 10 events each
    live = store.create("demo")
    for _ in range(30):
        store.append_token(live, "x", 1)  # a live run's events never count, and it is never dropped
    assert store.status(first) is not None and store.status(second) is not None
    third = finished_run(store, 8)  # 30 events retained: past 25, the oldest goes
    assert store.status(first) is None
    assert [store.status(run).state for run in (second, third, live)] == ["done", "done", "running"]
    assert len(store.read(live, 0)) == 30


def test_retained_events_keep_the_run_that_just_finished_whatever_its_size():
    store = make_store(retained_events_limit=5, event_log_size=1000)
    old = finished_run(store, 1)
    big = finished_run(store, 50)
    assert store.status(old) is None
    assert store.status(big).state == "done"
    assert len(store.read(big, 0)) == 52


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("key sk-abc123def456ghi789 is wrong", "key [redacted] is wrong"),
        ("key sk-proj-Abc_123-def456ghi is wrong", "key [redacted] is wrong"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: [redacted]"),
        ("'authorization': 'bearer xyz'", "'authorization': '[redacted]'"),
        ("sk-short", "sk-short"),  # too short to be a key
        ("no secret here", "no secret here"),
    ],
)
def test_redact_removes_key_shaped_strings(text, clean):
    assert redact(text) == clean


def test_redact_hides_given_texts_and_cuts_the_upstream_text_at_500():
    assert redact("the prompt was: tell me a secret", hide=["tell me a secret", "x"]) == (
        "the prompt was: [redacted]"
    )
    cut = upstream_text("sk-" + "a" * 20 + " " + "y" * 1000)
    assert cut == "[redacted] " + "y" * 489 + "... [cut at 500 characters]"


def test_redact_filter_cleans_messages_arguments_and_tracebacks():
    log_filter = RedactingFilter(secrets=["configured-secret-value"])
    try:
        raise ValueError("upstream said Bearer sk-abcdefghijklmnop")
    except ValueError:
        record = logging.LogRecord(
            "streamchat", logging.WARNING, __file__, 1, "run %s: %s", ("r1", "configured-secret-value"), True
        )
        record.exc_info = sys.exc_info()
    assert log_filter.filter(record)
    assert record.getMessage() == "run r1: [redacted]"
    assert "sk-abcdefghijklmnop" not in record.exc_text
    assert "upstream said [redacted]" in record.exc_text


def test_limits_a_storage_failure_is_a_503_store_unavailable(monkeypatch):
    from limits.errors import StorageError

    def broken(*args, **kwargs):
        raise StorageError(ConnectionError("redis is down"))

    guarded = create_app({**FAST_DEMO, "rate_limit": "5/minute"})
    monkeypatch.setattr(guarded.extensions["streamchat.guards"].rate_limiter, "test", broken)
    assert error_of(guarded.test_client().post("/runs", json=user("hi"))) == (503, "store_unavailable")
