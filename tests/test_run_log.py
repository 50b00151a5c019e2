"""The one log line each run leaves when it ends: its keys, both formats, and what it never holds.

The line is built by pure functions (streamchat/metrics.py), tested here with tables of exact text;
then read back from a real gunicorn's error log, in both formats (LOG_FORMAT=text and json), after
runs whose outcome the test chose: every key is there, in order, with the values the run had, and
neither the prompt nor the answer is anywhere in the log.

Run: ``python -m pytest tests/test_run_log.py -q`` (about 10 s).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from helpers import GunicornProcess, answer_text, parse_sse, user

from streamchat.config import Settings
from streamchat.metrics import client_hash, format_run_line

KEYS = [
    "run",
    "model",
    "outcome",
    "code",
    "finish_reason",
    "ttft_ms",
    "tokens",
    "duration_ms",
    "readers",
    "client",
]

# A run's fields as the producer reports them, and a failed run's (no first token, no finish reason).
DONE_FIELDS = {
    "run": "AbC-123_xyz",
    "model": "gpt-4o-mini",
    "outcome": "done",
    "code": None,
    "finish_reason": "stop",
    "ttft_ms": 231,
    "tokens": 42,
    "duration_ms": 1804,
    "readers": 2,
    "client": "3b891d205d35",
}
FAILED_FIELDS = {
    **DONE_FIELDS,
    "outcome": "failed",
    "code": "rate_limited",
    "finish_reason": None,
    "ttft_ms": None,
}


@pytest.mark.parametrize(
    ("fields", "log_format", "line"),
    [
        (
            DONE_FIELDS,
            "text",
            "run=AbC-123_xyz model=gpt-4o-mini outcome=done code=- finish_reason=stop ttft_ms=231 tokens=42"
            " duration_ms=1804 readers=2 client=3b891d205d35",
        ),
        (
            FAILED_FIELDS,
            "text",
            "run=AbC-123_xyz model=gpt-4o-mini outcome=failed code=rate_limited finish_reason=- ttft_ms=-"
            " tokens=42 duration_ms=1804 readers=2 client=3b891d205d35",
        ),
        (
            DONE_FIELDS,
            "json",
            '{"run":"AbC-123_xyz","model":"gpt-4o-mini","outcome":"done","code":null,"finish_reason":"stop",'
            '"ttft_ms":231,"tokens":42,"duration_ms":1804,"readers":2,"client":"3b891d205d35"}',
        ),
        (
            FAILED_FIELDS,
            "json",
            '{"run":"AbC-123_xyz","model":"gpt-4o-mini","outcome":"failed","code":"rate_limited",'
            '"finish_reason":null,"ttft_ms":null,"tokens":42,"duration_ms":1804,"readers":2,"client":"3b891d205d35"}',
        ),
        # A value that would break key=value parsing is quoted (a model name is configuration).
        ({"model": 'my model="x"', "client": ""}, "text", 'model="my model=\\"x\\"" client=""'),
        ({"model": "a\nb"}, "text", 'model="a\\nb"'),
    ],
)
def test_run_log_line_is_exact_in_each_format(fields, log_format, line):
    assert format_run_line(fields, log_format) == line


def test_run_log_client_hash_is_short_stable_and_hides_the_address():
    digest = client_hash("127.0.0.1")
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    assert client_hash("127.0.0.1") == digest
    assert client_hash("127.0.0.2") != digest
    assert "127" not in digest
    assert client_hash("") == ""


@pytest.mark.parametrize("value", ["xml", "JSON", " text"])
def test_run_log_format_setting_refuses_an_unknown_format(value):
    with pytest.raises(ValueError, match=f"LOG_FORMAT must be 'text' or 'json', got {value!r}"):
        Settings.from_env({"LOG_FORMAT": value})


def test_run_log_format_setting_defaults_to_text():
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"LOG_FORMAT": "json"}).log_format == "json"


# --- the line in a real gunicorn's error log ---------------------------------------------------------------

DEMO = {
    "MODEL_PROVIDER": "demo",
    "DEMO_TOKENS_PER_SECOND": "500",
    "DEMO_FIRST_TOKEN_SECONDS": "0.02",
    "DEMO_JITTER": "0",
    "RATE_LIMIT": "0",
}
# Words that must never reach the log: the prompt's, and (echoed back by the demo) the answer's.
SECRET = "zebra-quartz-marmalade"


@pytest.fixture(scope="module", params=["text", "json"])
def log_server(request) -> Iterator[tuple[GunicornProcess, str]]:
    """gunicorn with the demo model and LOG_FORMAT set to text, then json."""
    with GunicornProcess({**DEMO, "LOG_FORMAT": request.param}) as server:
        yield server, request.param


def parse_line(line: str, log_format: str) -> dict | None:
    """Parse one log line as the run line of that format; None if it is not one."""
    if log_format == "json":
        if not line.startswith("{"):
            return None
        return json.loads(line)  # the whole line: nothing before the JSON, nothing after it
    if not line.startswith("run="):
        return None
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)
    assert " ".join(f"{key}={value}" for key, value in pairs) == line  # nothing else on the line
    values = {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}
    for key in ("ttft_ms", "tokens", "duration_ms", "readers"):
        if values[key] != "-":
            values[key] = int(values[key])
    return {key: None if value == "-" else value for key, value in values.items()}


def run_line(server: GunicornProcess, log_format: str, run_id: str) -> dict:
    """Wait for the run's line in the error log and return it parsed (exactly one such line)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [parse_line(line, log_format) for line in server.error_log().split("\n")]
        mine = [line for line in lines if line is not None and line["run"] == run_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(mine) == 1, server.error_log()
    return mine[0]


def test_run_log_line_of_an_answer_has_every_key_and_no_words(log_server):
    server, log_format = log_server
    body = httpx.post(f"{server.base_url}/stream", json=user(f"/demo echo {SECRET} {SECRET}"), timeout=30)
    events = parse_sse(body.content)
    assert SECRET in answer_text(events)
    line = run_line(server, log_format, events[0]["data"]["run"])
    assert list(line) == KEYS
    tokens = sum(event["data"]["tokens"] for event in events if event["event"] == "token")
    assert {key: line[key] for key in KEYS if key not in ("ttft_ms", "duration_ms")} == {
        "run": events[0]["data"]["run"],
        "model": "demo",
        "outcome": "done",
        "code": None,
        "finish_reason": "stop",
        "tokens": tokens,
        "readers": 1,
        "client": client_hash("127.0.0.1"),
    }
    assert 0 <= line["ttft_ms"] <= line["duration_ms"] < 10_000
    assert SECRET not in server.error_log()
    assert "zebra" not in server.error_log()


def test_run_log_line_of_a_failed_run(log_server):
    server, log_format = log_server
    events = parse_sse(
        httpx.post(f"{server.base_url}/stream", json=user("/demo fail rate_limited"), timeout=30).content
    )
    line = run_line(server, log_format, events[0]["data"]["run"])
    assert list(line) == KEYS
    assert (line["outcome"], line["code"], line["finish_reason"], line["ttft_ms"], line["tokens"]) == (
        "failed",
        "rate_limited",
        None,
        None,
        0,
    )
    assert "/demo fail" not in server.error_log()


def test_run_log_line_of_a_stopped_run_read_by_two(log_server):
    server, log_format = log_server
    created = httpx.post(f"{server.base_url}/runs", json=user("/demo long 1000"), timeout=10)
    run_id = created.json()["id"]
    url = f"{server.base_url}/runs/{run_id}/stream"
    with httpx.stream("GET", url, timeout=30) as first, httpx.stream("GET", url, timeout=30) as second:
        bodies = [first.iter_raw(), second.iter_raw()]
        for body in bodies:  # both have started reading
            next(body)
        assert httpx.post(f"{server.base_url}/runs/{run_id}/stop", timeout=10).status_code == 202
        for body in bodies:  # to the end
            for _ in body:
                pass
    line = run_line(server, log_format, run_id)
    assert (line["outcome"], line["code"], line["finish_reason"], line["readers"]) == (
        "stopped",
        None,
        "stopped",
        2,
    )
    assert line["tokens"] > 0
