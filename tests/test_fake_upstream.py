"""Tests for the fake OpenAI-compatible upstream (the fakeupstream package).

The happy path is driven with the real ``openai`` SDK, so the fake is known to speak what the SDK
understands; the exact wire (chunk framing, JSON shape, status codes, how a connection is cut) is
checked over raw sockets on 127.0.0.1, byte for byte.

Run: ``python -m pytest tests/test_fake_upstream.py -W error``
"""

import http.client
import json
import math
import signal
import socket
import subprocess
import sys
import time
import uuid

import openai
import pytest

from fakeupstream import DirectiveError, FakeUpstreamProcess, Script, expected_text, parse_directive
from fakeupstream.__main__ import main
from fakeupstream.errors import CONTEXT_DIALECTS, CONTEXT_ERRORS, STATUS_ERRORS
from fakeupstream.script import WORDS

DEFAULTS = Script(tokens=8, tps=500.0, ttft=0.0)  # what the conftest fixture's command line sets
DONE = b"data: [DONE]\n\n"


def _tag() -> str:
    """Return a tag no other test uses."""
    return uuid.uuid4().hex[:12]


def _sdk(upstream: FakeUpstreamProcess) -> openai.OpenAI:
    """Return an OpenAI client for the fake upstream that never retries and ignores proxy settings."""
    http_client = openai.DefaultHttpxClient(trust_env=False)
    return openai.OpenAI(base_url=upstream.base_url, api_key="fake", max_retries=0, http_client=http_client)


def _chat(content: str, *, include_usage: bool = True, **extra: object) -> dict:
    """Return a streaming chat request body with one user message."""
    body = {"model": "fake-model", "messages": [{"role": "user", "content": content}], "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return {**body, **extra}


def _http_request(body: object, *, auth: str | None = "Bearer fake", close: bool = True) -> bytes:
    """Return the bytes of a POST /v1/chat/completions request."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    lines.append(f"Content-Length: {len(data)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _exchange(port: int, request: bytes) -> bytes:
    """Send one request on a new connection and return everything received until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    return bytes(received)


def _split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split a raw response into status code, headers (lower-case names) and body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def _dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """Return the chunks of a chunked body and whether it ended with the zero-length chunk."""
    chunks = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", rest
            return chunks, True
        if len(rest) < size + 2:
            break
        assert rest[size : size + 2] == b"\r\n"
        chunks.append(rest[:size])
        body = rest[size + 2 :]
    return chunks, False


def _frames(port: int, content: str, **extra: object) -> tuple[list[bytes], bool]:
    """Stream one request over a raw socket; return its chunks and whether the body ended properly."""
    status, headers, body = _split(_exchange(port, _http_request(_chat(content, **extra))))
    assert (status, headers["transfer-encoding"]) == (200, "chunked")
    return _dechunk(body)


def _data(frame: bytes) -> object:
    """Return the JSON of one ``data: {json}\\n\\n`` frame."""
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2, frame
    return json.loads(frame[6:-2])


def _token_frames(frames: list[bytes]) -> list[str]:
    """Return the content of every token chunk (skipping the role chunk)."""
    out = []
    for frame in frames:
        if frame == DONE or not frame.startswith(b"data: {"):
            continue
        chunk = _data(frame)
        choices = chunk.get("choices") or [{}]
        content = choices[0].get("delta", {}).get("content")
        if content:
            out.append(content)
    return out


def _stream_text(stream: openai.Stream) -> tuple[str, list]:
    """Read an SDK stream to the end; return the text and the chunks."""
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# --- pure parts -----------------------------------------------------------------------------------------


def test_expected_text_cycles_through_the_words() -> None:
    assert expected_text(0) == ""
    assert expected_text(4) == "Hello, world!"
    assert expected_text(len(WORDS) + 1) == "".join(WORDS) + "Hello"
    text = expected_text(len(WORDS))
    for hazard in ("\ndata: x", "\r", "é", "你好", "🚀", "</script>", "\u2028"):
        assert hazard in text


@pytest.mark.parametrize(
    ("message", "changes", "rest"),
    [
        ("hello", {}, "hello"),
        ("[fake]", {}, ""),
        ("[faker tokens=1]", {}, "[faker tokens=1]"),
        ("hi [fake tokens=3]", {"tokens": 3}, "hi"),
        ("[fake echo] hi there", {"echo": True}, "hi there"),
        ("a [fake tag=x tps=5 ttft=0.5] b", {"tag": "x", "tps": 5.0, "ttft": 0.5}, "a b"),
        ("line\n[fake fault=drop after=2]", {"fault": "drop", "after": 2}, "line\n"),
        ("[fake finish=content_filter]", {"finish": "content_filter"}, ""),
        ("[fake think=1.5]", {"think": 1.5}, ""),
        (
            "x [fake fault=status status=429 retry_after=2.5 no_retry]",
            {"fault": "status", "status": 429, "retry_after": 2.5, "no_retry": True},
            "x",
        ),
        ("[fake fault=context dialect=llamacpp]", {"fault": "context", "dialect": "llamacpp"}, ""),
    ],
)
def test_parse_directive_reads_keys_and_cuts_the_directive(message: str, changes: dict, rest: str) -> None:
    script, text = parse_directive(message, DEFAULTS)
    assert script == Script(**{**DEFAULTS.__dict__, **changes})
    assert text == rest


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("[fake tokns=3 tag=t]", "unknown directive key 'tokns'"),
        ("[fake verbose]", "unknown directive key 'verbose'"),
        ("[fake fault=dorp]", "bad value for fault: 'dorp' (expected one of: status,"),
        ("[fake tokens=-1]", "bad value for tokens: '-1'"),
        ("[fake tps=0]", "bad value for tps: '0'"),
        ("[fake echo=1]", "'echo' is a flag and takes no value"),
        ("[fake tokens]", "'tokens' needs a value"),
        ("[fake tokens=1 tokens=2]", "directive key 'tokens' given twice"),
        ("[fake fault=status]", "fault=status needs status=CODE"),
        ("[fake fault=status status=418]", "bad value for status: '418'"),
        ("[fake status=500]", "status=CODE only applies to fault=status"),
        ("[fake after=2]", "after=N only applies to fault="),
        ("[fake fault=drop no_retry]", "no_retry only applies to fault=status|context|quota"),
        ("[fake dialect=vllm]", "dialect=NAME only applies to fault=context"),
        ("[fake fault=context dialect=tgi]", "bad value for dialect: 'tgi' (expected one of: openai, vllm,"),
        ("[fake] [fake]", "only one [fake ...] directive per message, found 2"),
    ],
)
def test_parse_directive_refuses_what_it_cannot_obey(message: str, error: str) -> None:
    with pytest.raises(DirectiveError) as info:
        parse_directive(message, DEFAULTS)
    assert error in str(info.value)


# --- through the openai SDK -----------------------------------------------------------------------------


def test_sdk_stream_gives_exact_text_finish_and_usage_last(fake_upstream: FakeUpstreamProcess) -> None:
    tag = _tag()
    with _sdk(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": f"say it [fake tokens=20 tag={tag}]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, chunks = _stream_text(stream)
    assert text == expected_text(20)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 20)
    assert chunks[-1].usage.total_tokens == 22
    assert all(c.usage is None for c in chunks[:-1])
    [record] = fake_upstream.requests(tag)
    assert (record["outcome"], record["tokens_sent"], record["model"]) == ("completed", 20, "fake-model")


def test_sdk_stream_echoes_the_message_in_small_pieces(fake_upstream: FakeUpstreamProcess) -> None:
    message = "Grüße 🚀 [fake echo] line\nnext </script> 你好"
    expected = "Grüße 🚀 line\nnext </script> 你好"
    with _sdk(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": message}], stream=True
        )
        text, chunks = _stream_text(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert text == expected
    assert len(pieces) == math.ceil(len(expected) / 4)
    assert all(len(p) <= 4 for p in pieces)


def test_sdk_stream_stops_at_max_tokens_with_length(fake_upstream: FakeUpstreamProcess) -> None:
    with _sdk(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "[fake tokens=10]"}],
            stream=True,
            max_tokens=3,
            stream_options={"include_usage": True},
        )
        text, chunks = _stream_text(stream)
    assert text == expected_text(3)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize(
    ("content", "max_tokens", "text", "finish"),
    [
        ("[fake tokens=1000000]", 3, expected_text(3), "length"),  # only the three it sends are made
        ("[fake tokens=3]", 3, expected_text(3), "stop"),  # exactly at the limit: not cut
        ("[fake echo] abcdefghij", 2, "abcdefgh", "length"),  # two pieces of four characters
        ("[fake echo] abcdefgh", 2, "abcdefgh", "stop"),
    ],
)
def test_sdk_stream_is_cut_only_past_max_tokens(
    fake_upstream: FakeUpstreamProcess, content: str, max_tokens: int, text: str, finish: str
) -> None:
    with _sdk(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": content}], stream=True, max_tokens=max_tokens
        )
        got, chunks = _stream_text(stream)
    assert got == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish


def test_sdk_stream_skips_null_deltas(fake_upstream: FakeUpstreamProcess) -> None:
    with _sdk(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[fake fault=null_delta after=2]"}], stream=True
        )
        text, chunks = _stream_text(stream)
    assert text == expected_text(8)
    assert len(chunks) == 1 + 8 + 3 + 1  # role, tokens, the three skippable chunks, finish


def test_sdk_models_list_names_the_model(fake_upstream: FakeUpstreamProcess) -> None:
    with _sdk(fake_upstream) as client:
        assert [m.id for m in client.models.list()] == ["fake-model"]


@pytest.mark.parametrize(
    ("directive", "error_type", "code"),
    [
        ("fault=status status=429", openai.RateLimitError, "rate_limit_exceeded"),
        ("fault=status status=401", openai.AuthenticationError, "invalid_api_key"),
        ("fault=status status=503", openai.InternalServerError, None),
        ("fault=context", openai.BadRequestError, "context_length_exceeded"),
        ("fault=quota", openai.RateLimitError, "insufficient_quota"),
    ],
)
def test_sdk_raises_typed_errors_for_status_faults(
    fake_upstream: FakeUpstreamProcess, directive: str, error_type: type, code: str | None
) -> None:
    with _sdk(fake_upstream) as client, pytest.raises(error_type) as info:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"[fake {directive}]"}], stream=True
        )
    assert info.value.code == code


def test_sdk_raises_connection_error_when_the_stream_is_dropped(fake_upstream: FakeUpstreamProcess) -> None:
    seen = []
    with _sdk(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[fake fault=drop after=2]"}], stream=True
        )
        with pytest.raises(openai.APIConnectionError):
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == expected_text(2)


def test_sdk_raises_api_error_for_an_error_object(fake_upstream: FakeUpstreamProcess) -> None:
    with _sdk(fake_upstream) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "[fake fault=error_object after=1]"}],
            stream=True,
        )
        with pytest.raises(openai.APIError) as info:
            list(stream)
    assert info.value.message == "The server had an error while processing your request."


# --- the exact wire -------------------------------------------------------------------------------------


def test_wire_stream_is_one_frame_per_chunk_in_openai_shape(fake_upstream: FakeUpstreamProcess) -> None:
    raw = _exchange(fake_upstream.port, _http_request(_chat("hi there [fake tokens=2]")))
    status, headers, body = _split(raw)
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    frames, ended = _dechunk(body)
    assert ended
    assert len(frames) == 1 + 2 + 1 + 1 + 1
    chunks = [_data(f) for f in frames[:-1]]
    first = chunks[0]
    assert first["id"].startswith("chatcmpl-") and isinstance(first["created"], int)
    meta = {
        "id": first["id"],
        "object": "chat.completion.chunk",
        "created": first["created"],
        "model": "fake-model",
        "system_fingerprint": "fp_fake",
    }

    def choice(delta: dict, finish: str | None) -> dict:
        return {**meta, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    assert chunks == [
        {**choice({"role": "assistant", "content": "", "refusal": None}, None), "usage": None},
        {**choice({"content": "Hello"}, None), "usage": None},
        {**choice({"content": ","}, None), "usage": None},
        {**choice({}, "stop"), "usage": None},
        {**meta, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}},
    ]
    assert list(first) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]
    assert frames[-1] == DONE


def test_wire_stream_without_include_usage_has_no_usage(fake_upstream: FakeUpstreamProcess) -> None:
    frames, ended = _frames(fake_upstream.port, "[fake tokens=3]", include_usage=False)
    assert ended and frames[-1] == DONE
    assert len(frames) == 1 + 3 + 1 + 1
    assert all("usage" not in _data(f) for f in frames[:-1])


def test_wire_stream_sends_utf8_and_tricky_tokens_intact(fake_upstream: FakeUpstreamProcess) -> None:
    n = len(WORDS)
    frames, ended = _frames(fake_upstream.port, f"[fake tokens={n}]")
    assert ended
    assert "".join(_token_frames(frames)) == expected_text(n)
    assert b'{"content":" \xf0\x9f\x9a\x80"}' in b"".join(frames)  # raw UTF-8, as OpenAI sends it


def test_wire_stream_uses_the_scripted_finish(fake_upstream: FakeUpstreamProcess) -> None:
    frames, _ = _frames(fake_upstream.port, "[fake tokens=1 finish=content_filter]", include_usage=False)
    assert _data(frames[-2])["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("status", sorted(STATUS_ERRORS))
def test_wire_status_fault_sends_openai_error(fake_upstream: FakeUpstreamProcess, status: int) -> None:
    tag = _tag()
    raw = _exchange(
        fake_upstream.port, _http_request(_chat(f"[fake fault=status status={status} tag={tag}]"))
    )
    code, headers, body = _split(raw)
    type_, error_code, message = STATUS_ERRORS[status]
    assert code == status
    assert json.loads(body) == {
        "error": {"message": message, "type": type_, "param": None, "code": error_code}
    }
    assert headers.get("retry-after") == ("1" if status == 429 else None)
    assert "x-should-retry" not in headers
    [record] = fake_upstream.requests(tag)
    assert (record["outcome"], record["fault"], record["tokens_sent"]) == ("error_status", "status", 0)


def test_wire_status_fault_honours_retry_after_and_no_retry(fake_upstream: FakeUpstreamProcess) -> None:
    raw = _exchange(
        fake_upstream.port, _http_request(_chat("[fake fault=status status=503 retry_after=7 no_retry]"))
    )
    code, headers, _ = _split(raw)
    assert (code, headers["retry-after"], headers["x-should-retry"]) == (503, "7", "false")


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        (
            "context",
            400,
            {
                "message": "This model's maximum context length is 4096 tokens. However, your messages "
                "resulted in 9000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": None,
                "code": "context_length_exceeded",
            },
        ),
        (
            "quota",
            429,
            {
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            },
        ),
    ],
)
def test_wire_context_and_quota_faults(
    fake_upstream: FakeUpstreamProcess, fault: str, status: int, error: dict
) -> None:
    code, headers, body = _split(_exchange(fake_upstream.port, _http_request(_chat(f"[fake fault={fault}]"))))
    assert (code, json.loads(body)) == (status, {"error": error})
    assert "retry-after" not in headers


@pytest.mark.parametrize("dialect", CONTEXT_DIALECTS)
def test_wire_context_fault_speaks_each_dialect_byte_for_byte(
    fake_upstream: FakeUpstreamProcess, dialect: str
) -> None:
    tag = _tag()
    raw = _exchange(
        fake_upstream.port, _http_request(_chat(f"[fake fault=context dialect={dialect} tag={tag}]"))
    )
    code, headers, body = _split(raw)
    assert (code, headers["content-type"], body) == (400, "application/json", CONTEXT_ERRORS[dialect])
    assert headers["content-length"] == str(len(body))
    [record] = fake_upstream.requests(tag)
    assert (record["outcome"], record["fault"]) == ("error_status", "context")


def test_context_dialects_are_the_recorded_bodies() -> None:
    # What each family puts where: a relay recognises the error from these fields (and only these).
    errors = {dialect: json.loads(body)["error"] for dialect, body in CONTEXT_ERRORS.items()}
    assert {dialect: (e.get("type"), e.get("code")) for dialect, e in errors.items()} == {
        "openai": ("invalid_request_error", "context_length_exceeded"),
        "vllm": ("BadRequestError", 400),
        "llamacpp": ("exceed_context_size_error", 400),
        "litellm": (None, "400"),
        "ollama": ("invalid_request_error", None),
    }
    assert (errors["llamacpp"]["n_prompt_tokens"], errors["llamacpp"]["n_ctx"]) == (9000, 4096)
    assert errors["litellm"]["message"].startswith(
        "litellm.BadRequestError: litellm.ContextWindowExceededError: "
    )
    assert errors["ollama"]["message"] == "the input length exceeds the context length"
    assert CONTEXT_ERRORS["ollama"].endswith(b"}\n")  # Go's json.Encoder ends the body with a newline


def test_wire_drop_fault_ends_with_fin_and_no_last_chunk(fake_upstream: FakeUpstreamProcess) -> None:
    tag = _tag()
    frames, ended = _frames(fake_upstream.port, f"[fake fault=drop after=2 tag={tag}]")
    assert not ended
    assert len(frames) == 3 and _token_frames(frames) == ["Hello", ","]
    [record] = fake_upstream.requests(tag)
    assert (record["outcome"], record["tokens_sent"]) == ("fault", 2)


def test_wire_reset_fault_resets_the_connection(fake_upstream: FakeUpstreamProcess) -> None:
    with pytest.raises(ConnectionResetError):
        _exchange(fake_upstream.port, _http_request(_chat("[fake fault=reset after=2 ttft=0.05]")))


def test_wire_error_object_fault_sends_the_error_then_ends(fake_upstream: FakeUpstreamProcess) -> None:
    frames, ended = _frames(fake_upstream.port, "[fake fault=error_object after=1]")
    assert ended
    assert _token_frames(frames[:2]) == ["Hello"]
    error = (
        b'data: {"error":{"message":"The server had an error while processing your request.",'
        b'"type":"server_error","param":null,"code":null}}\n\n'
    )
    assert frames[2:] == [error]


def test_wire_no_done_fault_ends_cleanly_without_finish(fake_upstream: FakeUpstreamProcess) -> None:
    frames, ended = _frames(fake_upstream.port, "[fake fault=no_done after=2]")
    assert ended
    assert len(frames) == 3 and _token_frames(frames) == ["Hello", ","]


def test_wire_garbage_fault_sends_bad_json_then_continues(fake_upstream: FakeUpstreamProcess) -> None:
    frames, ended = _frames(fake_upstream.port, "[fake fault=garbage after=1 tokens=3]")
    assert ended
    assert frames[2] == b'data: {"id": this is not json\n\n'
    good = frames[:2] + frames[3:]
    assert "".join(_token_frames(good)) == expected_text(3)
    assert good[-1] == DONE and len(good) == 1 + 3 + 1 + 1 + 1


def test_wire_null_delta_fault_interleaves_skippable_chunks(fake_upstream: FakeUpstreamProcess) -> None:
    frames, ended = _frames(
        fake_upstream.port, "[fake fault=null_delta after=1 tokens=2]", include_usage=False
    )
    assert ended
    odd = [_data(f) for f in frames[2:5]]
    assert odd[0]["choices"][0]["delta"] == {"content": None}
    assert odd[1]["choices"][0]["delta"] == {}
    assert odd[2]["choices"] == [] and "usage" not in odd[2]
    assert _token_frames(frames) == ["Hello", ","]


def test_wire_think_streams_reasoning_chunks_without_content_before_the_answer(
    fake_upstream: FakeUpstreamProcess,
) -> None:
    frames, ended = _frames(fake_upstream.port, "[fake think=0.5 tokens=2]", include_usage=False)
    assert ended
    deltas = [_data(f)["choices"][0]["delta"] for f in frames[1:-2]]  # after the role, before [DONE]
    thinking = deltas[: deltas.index({"content": "Hello"})]
    assert len(thinking) == 2  # one every 0.2 s for 0.5 s
    assert all(delta == {"reasoning_content": "Let me think."} for delta in thinking)
    assert _token_frames(frames) == ["Hello", ","]


def test_wire_content_type_fault_answers_json(fake_upstream: FakeUpstreamProcess) -> None:
    code, headers, body = _split(
        _exchange(fake_upstream.port, _http_request(_chat("[fake fault=content_type]")))
    )
    assert (code, headers["content-type"]) == (200, "application/json")
    assert body == b'{"object":"chat.completion","choices":[]}'


def test_wire_keep_alive_serves_requests_in_turn_on_one_connection(
    fake_upstream: FakeUpstreamProcess,
) -> None:
    tag = _tag()
    with socket.create_connection(("127.0.0.1", fake_upstream.port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(_http_request(_chat(f"[fake tokens=2 tag={tag}]"), close=False))
            received = bytearray()
            while not received.endswith(b"\r\n0\r\n\r\n"):
                data = sock.recv(65536)
                assert data, "the server closed a keep-alive connection"
                received += data
            frames, ended = _dechunk(_split(bytes(received))[2])
            assert ended and _token_frames(frames) == ["Hello", ","]
        sock.sendall(_http_request(_chat(f"[fake tokens=1 tag={tag}]"), close=True))
        received = bytearray()
        while data := sock.recv(65536):  # Connection: close, so the server must end it
            received += data
    assert _split(bytes(received))[1]["connection"] == "close"
    assert [r["outcome"] for r in fake_upstream.requests(tag)] == ["completed"] * 3


def test_wire_expect_100_continue_is_answered_before_the_body(fake_upstream: FakeUpstreamProcess) -> None:
    body = json.dumps(_chat("[fake tokens=1]")).encode()
    head = _http_request(body).split(b"\r\n\r\n")[0] + b"\r\nExpect: 100-continue\r\n\r\n"
    with socket.create_connection(("127.0.0.1", fake_upstream.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    frames, ended = _dechunk(_split(bytes(received))[2])
    assert ended and _token_frames(frames) == ["Hello"]


@pytest.mark.parametrize(
    "directive",
    ["tokens=100 tps=5", "fault=stall after=1", "fault=silent", "tokens=5 ttft=30"],
)
def test_wire_client_close_is_seen_at_once(fake_upstream: FakeUpstreamProcess, directive: str) -> None:
    tag = _tag()
    with socket.create_connection(("127.0.0.1", fake_upstream.port), timeout=5) as sock:
        sock.sendall(_http_request(_chat(f"[fake {directive} tag={tag}]")))
        received = b""
        while b"\r\n\r\n" not in received:  # the headers (and role chunk) are out: the stream is live
            received += sock.recv(65536)
        time.sleep(0.3)  # let the server settle into its wait
        closed_at = time.time()  # just before the socket closes, on leaving this block
    record = fake_upstream.wait_for_outcome(tag, timeout=2)
    assert record["outcome"] == "client_closed"
    assert 0 <= record["closed_by_client_at"] - closed_at < 0.5
    assert record["ended"] - closed_at < 0.5
    assert record["tokens_sent"] <= 2


def test_wire_paces_first_token_and_the_rest(fake_upstream: FakeUpstreamProcess) -> None:
    with socket.create_connection(("127.0.0.1", fake_upstream.port), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(_http_request(_chat("[fake tokens=11 tps=50 ttft=0.2]")))
        received = bytearray()
        first = None
        while data := sock.recv(65536):
            received += data
            if first is None and b'"content":"Hello"' in received:
                first = time.monotonic() - start
        total = time.monotonic() - start
    assert 0.19 <= first < 0.4
    assert 0.39 <= total < 0.8  # 0.2 s, then ten more tokens 20 ms apart


# --- refusals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer ", "Basic Zm9vOmJhcg=="])
def test_chat_without_bearer_key_is_401(fake_upstream: FakeUpstreamProcess, auth: str | None) -> None:
    code, _, body = _split(_exchange(fake_upstream.port, _http_request(_chat("hi"), auth=auth)))
    assert code == 401
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", None)
    assert error["message"].startswith("You didn't provide an API key.")


def test_chat_with_unknown_directive_is_400_naming_it(fake_upstream: FakeUpstreamProcess) -> None:
    tag = _tag()
    raw = _exchange(fake_upstream.port, _http_request(_chat(f"[fake tokns=3 tag={tag}]")))
    code, _, body = _split(raw)
    assert code == 400
    assert json.loads(body)["error"]["message"].startswith(
        "fake upstream directive: unknown directive key 'tokns' (known: tokens,"
    )
    [record] = fake_upstream.requests(tag)
    assert record["outcome"] == "error_status"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_chat("hi", stream=False), "this fake upstream only streams: set stream to true"),
        (b"{not json", "We could not parse the JSON body of your request: "),
        ({"messages": []}, "you must provide a model parameter"),
    ],
)
def test_chat_with_bad_body_is_400(fake_upstream: FakeUpstreamProcess, body: object, message: str) -> None:
    code, _, raw = _split(_exchange(fake_upstream.port, _http_request(body)))
    error = json.loads(raw)["error"]
    assert (code, error["type"], error["code"]) == (400, "invalid_request_error", None)
    assert error["message"].startswith(message)


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"GET /v1/models\r\n\r\n", 400, "bad request line b'GET /v1/models'"),
        (b"GET /v1/models HTTP/1.1\r\nHost : x\r\n\r\n", 400, "bad header line b'Host : x'"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
            400,
            "bad Content-Length b'ten'",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
            "chunked request bodies are not supported",
        ),
    ],
    ids=["no version", "space before colon", "bad length", "chunked body"],
)
def test_malformed_request_is_refused_and_the_connection_closed(
    fake_upstream: FakeUpstreamProcess, raw: bytes, status: int, message: str
) -> None:
    code, headers, body = _split(_exchange(fake_upstream.port, raw))  # it returns once the server closes
    assert (code, headers["connection"], json.loads(body)["error"]["message"]) == (status, "close", message)


def test_unknown_path_is_404(fake_upstream: FakeUpstreamProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake_upstream.port, timeout=5)
    try:
        conn.request("GET", "/v1/nope")
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["error"]["type"]) == (
            404,
            "invalid_request_error",
        )
    finally:
        conn.close()


# --- records and the process ----------------------------------------------------------------------------


def test_records_clear_forgets_earlier_requests(fake_upstream: FakeUpstreamProcess) -> None:
    _frames(fake_upstream.port, "[fake tokens=1]")
    assert fake_upstream.requests() != []
    fake_upstream.clear()
    assert fake_upstream.requests() == []


def test_module_import_does_not_monkey_patch() -> None:
    from gevent import monkey

    assert not monkey.is_module_patched("socket")


@pytest.mark.parametrize(
    ("option", "key", "value", "reason"),
    [
        ("--tokens", "tokens", "-1", "must be between 0 and 1000000"),
        ("--tokens", "tokens", "1000001", "must be between 0 and 1000000"),
        ("--tokens", "tokens", "many", "invalid literal for int() with base 10: 'many'"),
        ("--tokens-per-second", "tps", "0", "must be a finite number above 0"),
        ("--tokens-per-second", "tps", "inf", "must be a finite number above 0"),
        ("--first-token-seconds", "ttft", "3601", "must be between 0 and 3600 seconds"),
    ],
)
def test_command_line_refuses_what_a_directive_refuses(
    capsys: pytest.CaptureFixture, option: str, key: str, value: str, reason: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([option, value, "--port", "0"])  # refused before anything listens
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == f"python -m fakeupstream: error: argument {option}: bad value {value!r} ({reason})"
    with pytest.raises(DirectiveError) as refused:
        parse_directive(f"[fake {key}={value}]", DEFAULTS)
    assert str(refused.value) == f"bad value for {key}: {value!r} ({reason})"


def test_process_refuses_a_non_loopback_host() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fakeupstream", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"refusing to listen on '0.0.0.0'" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_process_stops_cleanly_on_signal(signum: int) -> None:
    upstream = FakeUpstreamProcess("--first-token-seconds", "0")
    try:
        # A stream held open by a stall must not keep the process alive.
        with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
            sock.sendall(_http_request(_chat("[fake fault=silent]")))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
            upstream.process.send_signal(signum)
            assert upstream.process.wait(timeout=5) == 0
    finally:
        upstream.stop()
