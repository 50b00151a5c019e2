"""The HTTP API in-process (Flask test client, fast demo model): routes, errors, resume rules."""

import io
import itertools
import json
import tracemalloc

import gevent
import pytest
from helpers import FAST_DEMO, answer_text, parse_sse, user

from app import create_app
from streamchat.chat_request import ChatRequest
from streamchat.protocol import HTTP_ERROR_CODES
from streamchat.providers.base import FAIL_CODES
from streamchat.providers.demo import _PARAGRAPHS as DEMO_PARAGRAPHS
from streamchat.providers.demo import DemoProvider


def start(client, content: str, **extra) -> str:
    """Create a run with POST /runs and return its id."""
    response = client.post("/runs", json={**user(content), **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def wait_until_finished(client, run_id: str) -> dict:
    """Let the producer greenlet run until the run has ended; return its status."""
    for _ in range(500):
        status = client.get(f"/runs/{run_id}").get_json()
        if status["state"] != "running":
            return status
        gevent.sleep(0.01)
    raise AssertionError(f"run {run_id} did not finish: {status}")


def test_stream_answers_with_start_tokens_and_done(client):
    response = client.post("/stream", json=user("/demo echo Hello, streaming world!"))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Connection" not in response.headers
    body = response.get_data()
    assert body.startswith(b"retry: 3000\n\nid: 1\nevent: start\n")
    events = parse_sse(body)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "start" and events[0]["data"]["model"] == "demo"
    assert answer_text(events) == "Hello, streaming world!"
    assert events[-1] == {
        "id": len(events),
        "event": "done",
        "data": {
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10},
        },
    }


def test_stream_keeps_tricky_text_intact(client):
    tricky = (
        "line\nbreak\r\nCR\r data: fake\n\nevent: done\n "
        + "\u2028 \u00e9\u4f60\U0001f680 <script>alert(1)</script>"
    )
    events = parse_sse(client.post("/stream", json=user("/demo echo " + tricky)).get_data())
    assert answer_text(events) == tricky


def test_stream_honours_max_tokens_with_finish_length(client):
    events = parse_sse(client.post("/stream", json={**user("/demo long 50"), "max_tokens": 7}).get_data())
    assert sum(e["data"]["tokens"] for e in events if e["event"] == "token") == 7
    assert events[-1]["data"]["finish_reason"] == "length"


def test_stream_reports_content_filter(client):
    events = parse_sse(client.post("/stream", json=user("/demo filter")).get_data())
    assert events[-1]["event"] == "done" and events[-1]["data"]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("code", sorted(set(FAIL_CODES) - {"first_token_timeout", "stalled"}))
def test_demo_failures_end_with_one_typed_fail_event(client, code):
    events = parse_sse(client.post("/stream", json=user(f"/demo fail {code}")).get_data())
    retryable, message = FAIL_CODES[code]
    fail = events[-1]
    assert fail["event"] == "fail"
    assert fail["data"]["code"] == code
    assert fail["data"]["retryable"] is retryable
    assert fail["data"]["message"] == message
    assert [e["event"] for e in events].count("fail") == 1
    assert "done" not in [e["event"] for e in events]
    # The error never leaks into the answer text.
    assert message not in answer_text(events)


def test_demo_rate_limit_carries_retry_after(client):
    events = parse_sse(client.post("/stream", json=user("/demo fail rate_limited")).get_data())
    assert events[-1]["data"]["retry_after"] == 2.0


@pytest.mark.parametrize(("code", "clock"), [("first_token_timeout", 0), ("stalled", 3)])
def test_demo_silence_trips_the_producer_clocks(code, clock):
    app = create_app({**FAST_DEMO, "first_token_timeout_seconds": 0.2, "stall_timeout_seconds": 0.2})
    events = parse_sse(app.test_client().post("/stream", json=user(f"/demo fail {code}")).get_data())
    assert [e["event"] for e in events].count("token") == clock
    assert events[-1]["data"]["code"] == code


def test_runs_two_steps_create_then_read(client):
    response = client.post("/runs", json=user("/demo echo two steps"))
    assert response.status_code == 201
    body = response.get_json()
    run_id = body["id"]
    assert body == {"id": run_id, "stream_url": f"/runs/{run_id}/stream", "stop_url": f"/runs/{run_id}/stop"}
    assert response.headers["Location"] == f"/runs/{run_id}"
    events = parse_sse(client.get(body["stream_url"]).get_data())
    assert answer_text(events) == "two steps"
    status = client.get(f"/runs/{run_id}").get_json()
    assert status == {
        "id": run_id,
        "model": "demo",
        "state": "done",
        "last_event_id": events[-1]["id"],
        "finish_reason": "stop",
    }


def test_resume_replays_exactly_the_events_after_last_event_id(client):
    run_id = start(client, "/demo echo one two three four five six")
    full = parse_sse(client.get(f"/runs/{run_id}/stream").get_data())
    tail = parse_sse(client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "3"}).get_data())
    assert tail == full[3:]
    assert "start" not in [e["event"] for e in tail]


def test_resume_header_wins_over_query_parameter(client):
    run_id = start(client, "/demo echo one two three four five six")
    url = f"/runs/{run_id}/stream?last_event_id=1"
    by_query = parse_sse(client.get(url).get_data())
    by_header = parse_sse(client.get(url, headers={"Last-Event-ID": "4"}).get_data())
    assert by_query[0]["id"] == 2
    assert by_header[0]["id"] == 5


def test_finished_run_read_after_its_last_event_answers_204(client):
    run_id = start(client, "/demo echo done soon")
    last = parse_sse(client.get(f"/runs/{run_id}/stream").get_data())[-1]["id"]
    response = client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": str(last)})
    assert response.status_code == 204
    assert response.get_data() == b""


def test_unknown_run_stream_answers_204_and_status_404(client):
    assert client.get("/runs/nope/stream").status_code == 204
    response = client.get("/runs/nope")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_run"


def test_resume_from_dropped_events_answers_409():
    app = create_app({**FAST_DEMO, "event_log_size": 5})
    client = app.test_client()
    run_id = start(client, "/demo long 20")
    wait_until_finished(client, run_id)
    events = parse_sse(client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "18"}).get_data())
    assert [e["id"] for e in events] == [19, 20, 21, 22]
    response = client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "3"})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "events_dropped"


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "\u0661"])
def test_bad_last_event_id_is_a_400(client, value):
    run_id = start(client, "/demo echo x")
    response = client.get(f"/runs/{run_id}/stream", query_string={"last_event_id": value})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_last_event_id"


def test_stop_live_run_is_202_then_200_with_outcome(client):
    run_id = start(client, "/demo long 10000")
    response = client.post(f"/runs/{run_id}/stop")
    assert response.status_code == 202
    assert response.get_json()["state"] == "running"
    events = parse_sse(client.get(f"/runs/{run_id}/stream").get_data())
    assert events[-1] == {"id": events[-1]["id"], "event": "done", "data": {"finish_reason": "stopped"}}
    again = client.post(f"/runs/{run_id}/stop")
    assert again.status_code == 200
    assert again.get_json()["state"] == "stopped"
    assert again.get_json()["finish_reason"] == "stopped"


def test_stop_unknown_run_is_404(client):
    response = client.post("/runs/nope/stop")
    assert response.status_code == 404
    assert response.get_json() == {
        "error": {"code": "unknown_run", "message": "No run 'nope' here (unknown, or expired)."}
    }


BAD_BODIES = [
    ([], "invalid_body", None),
    ({}, "missing_field", "messages"),
    ({"messages": []}, "invalid_field", "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "invalid_field", "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "unknown_field", "messages.0.name"),
    ({**user("x"), "stream": True}, "unknown_field", "stream"),
    ({"messages": [{"role": "user", "content": 5}]}, "invalid_field", "messages.0.content"),
    ({"messages": [{"role": "user"}]}, "missing_field", "messages.0.content"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "invalid_field", "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, "invalid_field", "messages"),
    ({**user("x"), "model": "gpt-5"}, "unknown_model", "model"),
    ({**user("x"), "max_tokens": 0}, "invalid_field", "max_tokens"),
    ({**user("x"), "max_tokens": 4097}, "invalid_field", "max_tokens"),
    ({**user("x"), "max_tokens": "5"}, "invalid_field", "max_tokens"),
    ({**user("x"), "max_tokens": True}, "invalid_field", "max_tokens"),
    ({**user("x"), "temperature": 2.5}, "invalid_field", "temperature"),
    ({**user("x"), "temperature": -0.1}, "invalid_field", "temperature"),
    ({"messages": [{"role": "user", "content": "x"}] * 201}, "too_many_messages", "messages"),
    ({"messages": [{"role": "user", "content": "x" * 200_001}]}, "message_too_long", "messages.0.content"),
]


@pytest.mark.parametrize("route", ["/stream", "/runs"])
@pytest.mark.parametrize(("body", "code", "field"), BAD_BODIES)
def test_bad_body_is_a_400_naming_the_field(client, route, body, code, field):
    response = client.post(route, json=body)
    assert response.status_code == 400
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error.get("field") == field
    assert error["message"]


def test_values_at_the_limits_are_accepted(client):
    body = {**user("/demo echo ok"), "max_tokens": 4096, "temperature": 2, "model": "demo"}
    assert client.post("/stream", json=body).status_code == 200


def test_non_json_is_415(client):
    response = client.post("/stream", data="hello", content_type="text/plain")
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_malformed_json_is_400(client):
    response = client.post("/stream", data='{"messages": [', content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_oversized_body_is_413(client):
    body = json.dumps(user("x" * 1_000_001))
    response = client.post("/stream", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"


# What gunicorn hands Flask for a chunked body: no length, and a stream that ends where the body does.
CHUNKED = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("size", "status"), [(1000, 201), (1001, 413)])
def test_body_limit_is_the_same_with_or_without_a_length(chunked, size, status):
    # A chunked body has no Content-Length, so only reading it tells its size: at the limit it
    # passes, one byte over it fails, exactly as with a Content-Length.
    app = create_app({**FAST_DEMO, "max_request_bytes": 1000})
    body = json.dumps(user("/demo echo padded")).encode()
    body = body[:-1] + b" " * (size - len(body)) + b"}"  # JSON allows the padding
    framing = {"input_stream": io.BytesIO(body), "environ_overrides": CHUNKED} if chunked else {"data": body}
    response = app.test_client().post("/runs", content_type="application/json", **framing)
    assert response.status_code == status, response.get_json()
    if status == 413:  # one answer, word for word, whether Flask or the route noticed
        assert response.get_json()["error"] == {
            "code": "request_entity_too_large",
            "message": "The body must be at most 1000 bytes.",
        }


def test_fifty_kilobyte_conversation_streams_both_ways(client):
    conversation = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "w" * 1000}
        for i in range(50)
    ] + [{"role": "user", "content": "/demo echo still here"}]
    body = {"messages": conversation}
    assert len(json.dumps(body)) > 50_000
    assert answer_text(parse_sse(client.post("/stream", json=body).get_data())) == "still here"
    run_id = client.post("/runs", json=body).get_json()["id"]
    assert answer_text(parse_sse(client.get(f"/runs/{run_id}/stream").get_data())) == "still here"


def test_too_many_live_runs_is_503():
    client = create_app({**FAST_DEMO, "max_active_runs": 1}).test_client()
    start(client, "/demo long 10000")
    response = client.post("/runs", json=user("x"))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "too_many_runs"


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").get_json()["error"]["code"] == "not_found"
    response = client.get("/stream")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert response.mimetype == "application/json"


def test_a_bug_is_a_json_500_with_a_code_of_the_protocol():
    app = create_app(FAST_DEMO)

    @app.get("/_bug")
    def bug():
        raise RuntimeError("a deliberate bug")

    response = app.test_client().get("/_bug")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["code"] == "internal_error" and error["code"] in HTTP_ERROR_CODES
    assert "deliberate" not in error["message"]  # the traceback is for the log only


def test_index_names_the_demo_commands_only_when_the_demo_model_serves(client):
    assert "/demo echo TEXT" in client.get("/").get_data(as_text=True)
    real = create_app({"model_provider": "openai", "openai_base_url": "http://127.0.0.1:9/v1"})
    page = real.test_client().get("/").get_data(as_text=True)
    assert "Ask anything." in page and "/demo" not in page


def test_index_serves_the_page_with_route_templates(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert 'data-url-stream="/stream"' in page
    assert 'data-url-run-stream="/runs/RUN_ID/stream"' in page
    # The fetch reader's watchdog: silence past two heartbeats means the connection is dead.
    assert 'data-heartbeat-seconds="0.2"' in page


def test_stall_clock_restarts_for_every_token():
    # 20 tokens 50 ms apart take a second; a 0.2 s stall clock must never fire in between.
    app = create_app({**FAST_DEMO, "demo_tokens_per_second": 20.0, "stall_timeout_seconds": 0.2})
    events = parse_sse(app.test_client().post("/stream", json=user("/demo long 20")).get_data())
    assert events[-1]["event"] == "done"
    assert len([e for e in events if e["event"] == "token"]) == 20


def test_deeply_nested_json_is_400_not_500(client):
    response = client.post("/stream", data="[" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == {
        "code": "invalid_json",
        "message": "The body is nested too deeply.",
    }


def test_huge_last_event_id_is_400_not_500(client):
    run_id = start(client, "/demo echo x")
    response = client.get(f"/runs/{run_id}/stream", headers={"Last-Event-ID": "9" * 5000})
    assert response.status_code == 400


def test_lone_surrogate_in_content_is_400(client):
    body = b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'
    response = client.post("/stream", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "messages.0.content"


def test_demo_long_builds_no_more_than_max_tokens(client):
    body = {**user("/demo long 999999999"), "max_tokens": 5}
    with gevent.Timeout(5):
        events = parse_sse(client.post("/stream", json=body).get_data())
    assert len([e for e in events if e["event"] == "token"]) == 5
    assert events[-1]["data"]["finish_reason"] == "length"


def demo_long(count: int, max_tokens: int) -> ChatRequest:
    """Return a validated request for ``/demo long COUNT``."""
    messages = ({"role": "user", "content": f"/demo long {count}"},)
    return ChatRequest(messages=messages, model="demo", max_tokens=max_tokens, temperature=None)


def test_demo_long_goes_round_the_paragraphs_word_by_word():
    words = " ".join(DEMO_PARAGRAPHS).split(" ")
    provider = DemoProvider(tokens_per_second=1e9, first_token_seconds=0.0, jitter=0.0)
    *deltas, finish = provider.stream(demo_long(len(words) + 3, 10_000), "")
    assert "".join(delta.text for delta in deltas) == " ".join(words + words[:3])
    assert len(deltas) == len(words) + 3
    assert finish.reason == "stop"


def test_demo_long_holds_little_memory_while_it_streams():
    provider = DemoProvider(tokens_per_second=1e9, first_token_seconds=0.0, jitter=0.0)
    # Warm up first (gevent's hub, the regex cache), so that only the stream itself is measured.
    list(itertools.islice(provider.stream(demo_long(20, 20), ""), 10))
    tracemalloc.start()
    try:
        stream = provider.stream(demo_long(100_000, 100_000), "")
        first = [delta.text for delta in itertools.islice(stream, 10)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stream.close()
    assert "".join(first) == "Streaming an answer means sending each piece of text the"
    # Built up front, the whole answer peaked at 7.1 MB here (measured); piece by piece, about 11 KB.
    assert peak < 64_000
