"""A fake OpenAI-compatible Chat Completions server, for tests, demos and benchmarks.

Where it sits: in place of ``api.openai.com``. The app's openai provider talks to it exactly as it would
to OpenAI (same paths, same headers, same streaming bytes), so the whole journey browser -> app ->
upstream runs on 127.0.0.1 without an account, and every way an upstream can fail can be produced on
demand, over a real socket.

Try it::

    python -m streamchat.fake_upstream --port 8001
    curl -N http://127.0.0.1:8001/v1/chat/completions -H 'Authorization: Bearer fake' \\
        -d '{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi [fake tokens=5]"}]}'
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake gunicorn wsgi:app

Scripting: the last user message may hold one directive, ``[fake key=value flag ...]``; the rest of the
message is ordinary text. An unknown key or fault is a 400 that names it, so a typo fails loudly.

    tokens=N       answer with N tokens of the default text (``expected_text(N)``); CLI --tokens
    tps=F          tokens per second after the first; CLI --tokens-per-second
    ttft=F         seconds before the first token (headers and the role chunk go out at once)
    think=F        seconds of reasoning before that: a chunk with ``reasoning_content`` and no
                   ``content`` every 0.2 s, as vLLM and Ollama stream a reasoning model's thinking
    tag=STR        copied into the request's record, so a test finds its own request
    finish=WHY     stop | length | content_filter (max_tokens below the answer's length gives length)
    echo           answer with the message itself, directive removed, in pieces of 4 characters
    fault=NAME     one of the faults below; after=N sends N tokens first (default 0)
      status       status=CODE (400 401 403 404 409 422 429 500 502 503): an OpenAI error, no stream;
                   429 carries Retry-After (retry_after=S, default 1); no_retry adds x-should-retry: false
      context      400 context_length_exceeded          quota    429 insufficient_quota
      silent       role chunk, then nothing until the client leaves (at most 300 s)
      stall        N tokens, then nothing until the client leaves (at most 300 s)
      drop         N tokens, then close (FIN) without the last chunk
      reset        N tokens, then close with an RST (SO_LINGER 0)
      error_object N tokens, then an OpenAI ``{"error": ...}`` frame, and the body ends cleanly
      no_done      N tokens, then the body ends cleanly with no finish chunk and no [DONE]
      garbage      N tokens, then a frame that is not JSON, then the rest as usual
      content_type 200 with Content-Type application/json and a non-stream body
      null_delta   N tokens, then chunks to skip (content null, empty delta, empty choices), then the rest

``GET /_fake/requests`` lists what happened to every chat request (``DELETE`` clears the list), so a
test can check, for example, that the app closed its upstream connection when the user pressed stop.
Each record's ``outcome`` is null while the response runs, then ``completed``, ``client_closed`` (the
client hung up first, whatever the fault), ``fault`` (a scripted fault ended or replaced the stream) or
``error_status`` (any 4xx/5xx answer, scripted or not).

Deliberate choices:

- gevent's ``StreamServer`` and a hand-written HTTP/1.1 reader instead of a framework: the exact bytes
  on the wire are the point, and a benchmark drives thousands of streams through it at once.
- Each SSE frame (``data: {json}\\n\\n``) is one HTTP chunk, sent in one write; JSON is compact and
  non-ASCII text goes out as raw UTF-8, as OpenAI sends it.
- While a response streams, a second greenlet per connection sits in ``recv``. A client that leaves is
  seen at once (EOF or reset), even while the writer sleeps between tokens or holds a stall.
- Tokens are paced by one ticker greenlet for all streams, not by one timer per token per stream: it
  wakes every few milliseconds and writes every token that is due. The benchmark (bench/run.py)
  drives thousands of streams through this server on one core beside its load generator, and the
  harness must cost far less than the relay it measures. A token may go out up to ``_TICK`` late.
- ``monkey.patch_all()`` runs only under ``__main__``: tests import this module unpatched (for
  ``expected_text`` and ``FakeUpstreamProcess``) and start the server as a child process.
- It refuses to listen on a non-loopback address unless told to: it accepts any API key.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import ipaddress
import itertools
import json
import math
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Self

import gevent
from gevent.event import Event
from gevent.server import StreamServer

# The default answer, token by token. Besides plain words it holds what breaks careless relays: a
# newline, a token that looks like an SSE field once it starts a line ("data: x" right after "\n"),
# multi-byte UTF-8 (2, 3 and 4 bytes), a "\r" (an SSE line ending on its own), U+2028 (a line break only
# to wrong splitters), and markup that must reach the page as text.
_WORDS = (
    "Hello",
    ",",
    " world",
    "!",
    "\n",
    "data: x",
    " é",
    " 你好",
    " 🚀",
    " cr\r",
    "\n",
    " </script>",
    " <b>bold</b>",
    " \u2028",
    " the",
    " end",
    ".",
)

_FAULTS = (
    "status",
    "context",
    "quota",
    "silent",
    "stall",
    "drop",
    "reset",
    "error_object",
    "no_done",
    "garbage",
    "content_type",
    "null_delta",
)
_HTTP_FAULTS = ("status", "context", "quota")  # answered with an HTTP error instead of a stream
_AFTER_FAULTS = ("stall", "drop", "reset", "error_object", "no_done", "garbage", "null_delta")
_FINISHES = ("stop", "length", "content_filter")
_STATUSES = (400, 401, 403, 404, 409, 422, 429, 500, 502, 503)
_FLAGS = ("echo", "no_retry")

# Bodies of fault=status, in OpenAI's error shape: (type, code, message).
_STATUS_ERRORS = {
    400: ("invalid_request_error", None, "Fake bad request (fault=status status=400)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        (
            "Incorrect API key provided: fake. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        ),
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    409: ("invalid_request_error", None, "Fake conflict (fault=status status=409)."),
    422: ("invalid_request_error", None, "Fake unprocessable entity (fault=status status=422)."),
    429: (
        "requests",
        "rate_limit_exceeded",
        (
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
            "Please try again in 1s."
        ),
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_CONTEXT_MESSAGE = (
    "This model's maximum context length is 4096 tokens. However, your messages resulted in 9000 "
    "tokens. Please reduce the length of the messages."
)
_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."

_DIRECTIVE = re.compile(r"\[fake(?:[ \t]+([^\]]*))?\]")
_HOLD_SECONDS = 300.0  # how long silent/stall hold a connection the client never closes
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
_MAX_TOKENS = 1_000_000
_MAX_RECORDS = 100_000  # a long benchmark must not grow the record list forever
_RECV_SIZE = 65536
_TOKEN_CACHE_SIZE = 64  # encoded token chunks kept per response (echo answers never repeat)
_THINK_INTERVAL = 0.2  # seconds between reasoning chunks (think=F)
_TICK = 0.002  # the token ticker sleeps at least this long between rounds, so writes come in batches
_ROUND_LIMIT = 2000  # writes per round at most when behind schedule, then the other greenlets run

_DONE = b"data: [DONE]\n\n"
_LAST_CHUNK = b"0\r\n\r\n"  # the zero-length chunk that ends a chunked body (RFC 9112, 7.1)
_ERROR_FRAME = (
    b'data: {"error":{"message":"The server had an error while processing your request.",'
    b'"type":"server_error","param":null,"code":null}}\n\n'
)
_GARBAGE_FRAME = b'data: {"id": this is not json\n\n'
_CONTENT_TYPE_BODY = b'{"object":"chat.completion","choices":[]}'


def expected_text(tokens: int) -> str:
    """Return the whole default answer for ``tokens`` tokens."""
    return "".join(_WORDS[i % len(_WORDS)] for i in range(tokens))


# --- scripting ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Script:
    """How one request is answered: the CLI defaults, overridden by the message's directive."""

    tokens: int = 40
    tps: float = 20.0
    ttft: float = 0.3
    think: float = 0.0
    tag: str | None = None
    finish: str = "stop"
    echo: bool = False
    fault: str | None = None
    after: int = 0
    status: int | None = None
    retry_after: float | None = None
    no_retry: bool = False


class DirectiveError(ValueError):
    """A ``[fake ...]`` directive that cannot be obeyed; ``tag`` is kept so the record still has it."""

    def __init__(self, message: str, tag: str | None = None) -> None:
        super().__init__(message)
        self.tag = tag


def _count(text: str) -> int:
    """Parse a token count."""
    value = int(text)
    if not 0 <= value <= _MAX_TOKENS:
        raise ValueError(f"must be between 0 and {_MAX_TOKENS}")
    return value


def _rate(text: str) -> float:
    """Parse a rate: finite and above zero, or tokens would never come."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a finite number above 0")
    return value


def _seconds(text: str) -> float:
    """Parse a duration in seconds."""
    value = float(text)
    if not (0 <= value <= 3600):
        raise ValueError("must be between 0 and 3600 seconds")
    return value


def _one_of(*choices: str) -> Callable[[str], str]:
    """Return a parser that accepts only the given words."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return text

    return parse


def _status(text: str) -> int:
    """Parse one of the HTTP status codes that fault=status can send."""
    return int(_one_of(*map(str, _STATUSES))(text))


_PARSERS = {
    "tokens": _count,
    "tps": _rate,
    "ttft": _seconds,
    "think": _seconds,
    "tag": str,
    "finish": _one_of(*_FINISHES),
    "fault": _one_of(*_FAULTS),
    "after": _count,
    "status": _status,
    "retry_after": _seconds,
}


def parse_directive(message: str, defaults: Script) -> tuple[Script, str]:
    """Return the script a user message asks for, and the message without its directive."""
    matches = list(_DIRECTIVE.finditer(message))
    if not matches:
        return defaults, message
    if len(matches) > 1:
        raise DirectiveError(f"only one [fake ...] directive per message, found {len(matches)}")
    match = matches[0]
    values, flags = _split_words(match[1] or "")
    tag = values.get("tag")
    changes: dict[str, object] = {flag: True for flag in flags}
    for key, text in values.items():
        try:
            changes[key] = _PARSERS[key](text)
        except ValueError as exc:
            raise DirectiveError(f"bad value for {key}: {text!r} ({exc})", tag) from None
    script = dataclasses.replace(defaults, **changes)
    _check_combination(script, values, flags)
    return script, _cut_out(message, match.start(), match.end())


def _split_words(body: str) -> tuple[dict[str, str], set[str]]:
    """Split a directive's body into ``key=value`` pairs and bare flags; refuse unknown names."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    for word in body.split():
        key, sep, value = word.partition("=")
        if key in values or key in flags:
            raise DirectiveError(f"directive key {key!r} given twice", values.get("tag"))
        if sep:
            values[key] = value
        else:
            flags.add(key)
    tag = values.get("tag")
    for key in values:
        if key in _FLAGS:
            raise DirectiveError(f"{key!r} is a flag and takes no value", tag)
    for key in flags:
        if key in _PARSERS:
            raise DirectiveError(f"{key!r} needs a value, as in {key}=...", tag)
    unknown = sorted((values.keys() - _PARSERS.keys()) | (flags - set(_FLAGS)))
    if unknown:
        known = ", ".join([*_PARSERS, *_FLAGS])
        raise DirectiveError(f"unknown directive key {', '.join(map(repr, unknown))} (known: {known})", tag)
    return values, flags


def _check_combination(script: Script, values: dict[str, str], flags: set[str]) -> None:
    """Refuse keys that would be silently ignored with the chosen fault."""
    if script.fault == "status" and script.status is None:
        raise DirectiveError("fault=status needs status=CODE", script.tag)
    if "status" in values and script.fault != "status":
        raise DirectiveError("status=CODE only applies to fault=status", script.tag)
    for key in ("retry_after", "no_retry"):
        if (key in values or key in flags) and script.fault not in _HTTP_FAULTS:
            raise DirectiveError(f"{key} only applies to fault={'|'.join(_HTTP_FAULTS)}", script.tag)
    if "after" in values and script.fault not in _AFTER_FAULTS:
        raise DirectiveError(f"after=N only applies to fault={'|'.join(_AFTER_FAULTS)}", script.tag)


def _cut_out(message: str, start: int, end: int) -> str:
    """Remove message[start:end] and one space beside it (the one after, else the one before)."""
    if message[end : end + 1] == " ":
        end += 1
    elif start > 0 and message[start - 1] == " ":
        start -= 1
    return message[:start] + message[end:]


# --- wire format ----------------------------------------------------------------------------------------


def _json_bytes(value: object) -> bytes:
    """Encode compact JSON with raw UTF-8, as OpenAI does."""
    # A lone surrogate (legal in a JSON request, "\ud800") cannot be UTF-8; backslashreplace turns it
    # back into the JSON escape "\ud800", which is valid here because it can only occur inside a string.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace")


def _chunk(frame: bytes) -> bytes:
    """Wrap bytes as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(frame), frame)


class _Frames:
    """Encode one completion's chunks; the parts that never change are encoded once per request."""

    __slots__ = ("_head", "_meta", "_tail", "_tokens", "_usage_null")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        meta = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        self._meta = b"data: " + _json_bytes(meta)[:-1]  # open, so that "choices" can follow
        # With include_usage, OpenAI puts "usage":null on every chunk before the usage chunk.
        self._usage_null = b',"usage":null' if include_usage else b""
        self._head = self._meta + b',"choices":[{"index":0,"delta":'
        self._tail = b',"logprobs":null,"finish_reason":null}]' + self._usage_null + b"}\n\n"
        self._tokens: dict[str, bytes] = {}  # an answer repeats a few words: encode each once

    def role(self) -> bytes:
        """Return the first chunk, which only announces the assistant role."""
        return _chunk(self._head + b'{"role":"assistant","content":"","refusal":null}' + self._tail)

    def token(self, text: str) -> bytes:
        """Return the chunk carrying one token."""
        frame = self._tokens.get(text)
        if frame is None:
            frame = _chunk(b'%s{"content":%s}%s' % (self._head, _json_bytes(text), self._tail))
            if len(self._tokens) < _TOKEN_CACHE_SIZE:
                self._tokens[text] = frame
        return frame

    def reasoning(self) -> bytes:
        """Return a chunk of a reasoning model's thinking: ``reasoning_content``, no ``content``."""
        return _chunk(self._head + b'{"reasoning_content":"Let me think."}' + self._tail)

    def interlude(self) -> bytes:
        """Return chunks a client must skip: a null content, an empty delta, and empty choices."""
        empty_choices = self._meta + b',"choices":[]' + self._usage_null + b"}\n\n"
        return (
            _chunk(self._head + b'{"content":null}' + self._tail)
            + _chunk(self._head + b"{}" + self._tail)
            + _chunk(empty_choices)
        )

    def ending(self, finish: str, usage: dict[str, int] | None) -> bytes:
        """Return the finish chunk, the usage chunk if asked for, ``[DONE]`` and the last chunk."""
        tail = b',"logprobs":null,"finish_reason":"%s"}]%s}\n\n' % (finish.encode(), self._usage_null)
        out = _chunk(self._head + b"{}" + tail)
        if usage is not None:
            out += _chunk(self._meta + b',"choices":[],"usage":' + _json_bytes(usage) + b"}\n\n")
        return out + _chunk(_DONE) + _LAST_CHUNK


def _response_head(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    """Return the status line and headers of a response."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    """Return an error in OpenAI's shape."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# --- HTTP/1.1, just enough ------------------------------------------------------------------------------


class _HttpError(Exception):
    """An error answered with a JSON body; ``close`` when the connection cannot be trusted after it."""

    def __init__(
        self,
        status: int,
        body: dict,
        headers: list[tuple[str, str]] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []
        self.close = close


@dataclasses.dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Conn:
    """One client connection: its socket, bytes read but not yet used, and whether the client left."""

    __slots__ = ("buf", "gone", "gone_at", "number", "sock")

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number  # which connection of the server's life: shows keep-alive reuse
        self.buf = bytearray()
        self.gone = Event()
        self.gone_at: float | None = None

    def fill(self) -> bool:
        """Read more bytes into the buffer; return False at end of stream."""
        data = self.sock.recv(_RECV_SIZE)
        self.buf += data
        return bool(data)

    def watch(self) -> None:
        """Block in recv while a response streams, so that a client that leaves is noticed at once."""
        try:
            while self.fill():
                pass  # bytes of an early next request stay in buf for the request reader
        except OSError:
            pass  # a reset means the client left, exactly like a clean close
        self.gone_at = time.time()
        self.gone.set()


def _read_request(conn: _Conn) -> _Request | None:
    """Read one request; return None if the client closed the connection before sending one."""
    while (end := conn.buf.find(b"\r\n\r\n")) < 0:
        if len(conn.buf) > _MAX_HEAD:
            raise _HttpError(431, _error_body("request headers too large"), close=True)
        if not conn.fill():
            return None
    head = conn.buf[:end].decode("latin-1")
    del conn.buf[: end + 4]
    request_line, *lines = head.split("\r\n")
    try:
        method, target, version = request_line.split(" ")
    except ValueError:
        raise _HttpError(400, _error_body(f"bad request line {request_line!r}"), close=True) from None
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise _HttpError(400, _error_body(f"bad header line {line!r}"), close=True)
        headers[name.strip().lower()] = value.strip()
    body = _read_body(conn, headers)
    # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 clients get one response each.
    keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    return _Request(method, target.partition("?")[0], headers, body, keep_alive)


def _read_body(conn: _Conn, headers: dict[str, str]) -> bytes:
    """Read a Content-Length body (the OpenAI SDK never sends a chunked request)."""
    if "transfer-encoding" in headers:
        raise _HttpError(501, _error_body("chunked request bodies are not supported"), close=True)
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _HttpError(400, _error_body("bad Content-Length"), close=True) from None
    if not 0 <= length <= _MAX_BODY:
        raise _HttpError(413, _error_body(f"body must be at most {_MAX_BODY} bytes"), close=True)
    if length and headers.get("expect", "").lower() == "100-continue":
        conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before big bodies
    while len(conn.buf) < length:
        if not conn.fill():
            raise _HttpError(400, _error_body("body shorter than Content-Length"), close=True)
    body = bytes(conn.buf[:length])
    del conn.buf[:length]
    return body


def _send_json(
    conn: _Conn, status: int, obj: object, keep_alive: bool, headers: list[tuple[str, str]] | None = None
) -> None:
    """Send a complete JSON response."""
    body = _json_bytes(obj)
    head = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *(headers or [])]
    conn.sock.sendall(_response_head(status, head, keep_alive) + body)


def _abort(sock: socket.socket, reset: bool) -> None:
    """Close the socket mid-response: a FIN, or with ``reset`` an RST (SO_LINGER with a zero timeout)."""
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- the server -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """Everything a stream needs, read from the request before the first byte is sent."""

    script: Script
    model: str
    pieces: list[str]
    finish: str
    include_usage: bool
    prompt_tokens: int


class FakeUpstream:
    """The request handler behind ``StreamServer``; it also keeps the record of chat requests."""

    def __init__(self, defaults: Script, model: str) -> None:
        self.defaults = defaults
        self.model = model
        self.records: deque[dict] = deque(maxlen=_MAX_RECORDS)
        self.count = 0
        self.connections = 0

    def handle(self, sock: socket.socket, address: object) -> None:
        """Serve requests on one connection until either side ends it (StreamServer then closes it)."""
        # Tokens are small writes; Nagle's algorithm would hold them back waiting for ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        conn = _Conn(sock, self.connections)
        try:
            while self._serve_one(conn):
                pass
        except OSError:
            pass  # the client reset the connection: nobody is left to answer

    def _serve_one(self, conn: _Conn) -> bool:
        """Answer one request; return whether to wait for another on the same connection."""
        try:
            request = _read_request(conn)
        except _HttpError as exc:
            _send_json(conn, exc.status, exc.body, False, exc.headers)
            return False
        if request is None:
            return False
        route = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("GET", "/v1/models"): self._models,
            ("GET", "/_fake/requests"): self._list_records,
            ("DELETE", "/_fake/requests"): self._clear_records,
        }.get((request.method, request.path))
        if route is not None:
            return route(conn, request) and request.keep_alive and not conn.gone.is_set()
        known = request.path in ("/v1/chat/completions", "/v1/models", "/_fake/requests")
        status = 405 if known else 404
        message = f"{request.method} {request.path} is not served here"
        _send_json(conn, status, _error_body(message), request.keep_alive)
        return request.keep_alive

    def _models(self, conn: _Conn, request: _Request) -> bool:
        """List the one model, as ``GET /v1/models`` does."""
        body = {
            "object": "list",
            "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}],
        }
        _send_json(conn, 200, body, request.keep_alive)
        return True

    def _list_records(self, conn: _Conn, request: _Request) -> bool:
        """Send the records of every chat request so far."""
        _send_json(conn, 200, list(self.records), request.keep_alive)
        return True

    def _clear_records(self, conn: _Conn, request: _Request) -> bool:
        """Forget the records."""
        self.records.clear()
        _send_json(conn, 200, [], request.keep_alive)
        return True

    def _chat(self, conn: _Conn, request: _Request) -> bool:
        """Answer a chat completion: an HTTP error, a fault, or the scripted stream."""
        self.count += 1
        record = {
            "n": self.count,
            "connection": conn.number,
            "tag": None,
            "model": None,
            "fault": None,
            "tokens_sent": 0,
            "outcome": None,  # null while the response is still going
            "started": time.time(),
            "ended": None,
            "closed_by_client_at": None,
        }
        self.records.append(record)
        try:
            plan = self._plan(request, record)
        except _HttpError as exc:
            record.update(outcome="error_status", ended=time.time())
            _send_json(conn, exc.status, exc.body, request.keep_alive, exc.headers)
            return True
        if plan.script.fault == "content_type":
            record.update(outcome="fault", ended=time.time())
            head = [("Content-Type", "application/json"), ("Content-Length", str(len(_CONTENT_TYPE_BODY)))]
            conn.sock.sendall(_response_head(200, head, request.keep_alive) + _CONTENT_TYPE_BODY)
            return True
        return self._stream(conn, request, plan, record)

    def _plan(self, request: _Request, record: dict) -> _Plan:
        """Validate the request and read everything the stream needs; raise _HttpError to refuse."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            raise _HttpError(401, _error_body(message))
        try:
            body = json.loads(request.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _HttpError(
                400, _error_body(f"We could not parse the JSON body of your request: {exc}")
            ) from None
        if not isinstance(body, dict):
            raise _HttpError(400, _error_body("the request body must be a JSON object"))
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise _HttpError(400, _error_body("you must provide a model parameter"))
        record["model"] = model
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _HttpError(400, _error_body("messages must be a list of objects"))
        if body.get("stream") is not True:
            raise _HttpError(400, _error_body("this fake upstream only streams: set stream to true"))
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise _HttpError(400, _error_body("stream_options must be an object"))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise _HttpError(400, _error_body(f"max_tokens must be a positive integer, got {limit!r}"))

        texts = [_text_of(m) for m in messages]
        pairs = zip(reversed(messages), reversed(texts), strict=True)
        last_user = next((text for message, text in pairs if message.get("role") == "user"), "")
        try:
            script, rest = parse_directive(last_user, self.defaults)
        except DirectiveError as exc:
            record["tag"] = exc.tag
            raise _HttpError(400, _error_body(f"fake upstream directive: {exc}")) from None
        record.update(tag=script.tag, fault=script.fault)
        _raise_http_fault(script)

        if script.echo:
            pieces = [rest[i : i + 4] for i in range(0, len(rest), 4)]  # code points, never half a char
        else:
            pieces = [_WORDS[i % len(_WORDS)] for i in range(script.tokens)]
        finish = script.finish
        if limit is not None and limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        # A rough count: whitespace-separated words in every message, the directive left out.
        prompt_tokens = sum(len(t.split()) for t in texts) - len(last_user.split()) + len(rest.split())
        include_usage = options.get("include_usage") is True
        return _Plan(script, model, pieces, finish, include_usage, prompt_tokens)

    def _stream(self, conn: _Conn, request: _Request, plan: _Plan, record: dict) -> bool:
        """Send the scripted stream; return whether the connection can serve another request."""
        frames = _Frames(
            f"chatcmpl-fake-{record['n']}", int(record["started"]), plan.model, plan.include_usage
        )
        headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Transfer-Encoding", "chunked"),
            ("Cache-Control", "no-cache"),
            ("x-request-id", f"req_fake_{record['n']}"),
        ]
        head = _response_head(200, headers, request.keep_alive)
        watcher = gevent.spawn(conn.watch)
        try:
            outcome, ending = _play(conn, head, plan, frames, record)
        except OSError:  # a write failed: the client has gone
            outcome, ending = "client_closed", None
        finally:
            watcher.kill()
        now = time.time()
        record.update(outcome=outcome, ended=now)
        if outcome == "client_closed":
            record["closed_by_client_at"] = conn.gone_at or now
            return False
        if ending is not None:
            _abort(conn.sock, reset=ending == "reset")
            return False
        return True


def _text_of(message: dict) -> str:
    """Return the text of a chat message whose content is a string or a list of text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _raise_http_fault(script: Script) -> None:
    """Raise the HTTP error that fault=status, context or quota asks for."""
    headers = []
    if script.fault == "status":
        status = script.status
        type_, code, message = _STATUS_ERRORS[status]
    elif script.fault == "context":
        status, type_, code, message = (
            400,
            "invalid_request_error",
            "context_length_exceeded",
            _CONTEXT_MESSAGE,
        )
    elif script.fault == "quota":
        status, type_, code, message = 429, "insufficient_quota", "insufficient_quota", _QUOTA_MESSAGE
    else:
        return
    retry_after = script.retry_after
    if retry_after is None and script.fault == "status" and status == 429:
        retry_after = 1
    if retry_after is not None:
        headers.append(("Retry-After", f"{retry_after:g}"))
    if script.no_retry:
        headers.append(("x-should-retry", "false"))  # the OpenAI SDK obeys this over its own rules
    raise _HttpError(status, _error_body(message, type_, code), headers)


def _play(conn: _Conn, head: bytes, plan: _Plan, frames: _Frames, record: dict) -> tuple[str, str | None]:
    """Write the stream as scripted; return the outcome and the abrupt ending to apply, if any."""
    script, pieces = plan.script, plan.pieces
    fault = script.fault
    conn.sock.sendall(head + frames.role())  # headers and the role chunk go out at once, as OpenAI's do
    if not _think(conn, frames, script.think):
        return "client_closed", None
    first_due = time.monotonic() + script.ttft
    interval = 1 / script.tps
    cut = len(pieces) if fault is None else 0 if fault == "silent" else min(script.after, len(pieces))
    if not _send_tokens(conn, frames, pieces, range(cut), first_due, interval, record):
        return "client_closed", None
    if fault is not None:
        # The fault strikes when token number `cut` would have been due: the server died while
        # "generating" it, not in the same instant as the last token it sent.
        if not _wait_until(conn, first_due + cut * interval):
            return "client_closed", None
        if fault in ("drop", "reset"):
            return "fault", fault
        if fault in ("silent", "stall"):
            return ("client_closed", None) if conn.gone.wait(_HOLD_SECONDS) else ("fault", "drop")
        if fault == "error_object":
            conn.sock.sendall(_chunk(_ERROR_FRAME) + _LAST_CHUNK)
            return "fault", None
        if fault == "no_done":
            conn.sock.sendall(_LAST_CHUNK)
            return "fault", None
        conn.sock.sendall(frames.interlude() if fault == "null_delta" else _chunk(_GARBAGE_FRAME))
    if not _send_tokens(conn, frames, pieces, range(cut, len(pieces)), first_due, interval, record):
        return "client_closed", None
    usage = None
    if plan.include_usage:
        sent = len(pieces)
        usage = {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": sent,
            "total_tokens": plan.prompt_tokens + sent,
        }
    conn.sock.sendall(frames.ending(plan.finish, usage))
    return "completed", None


def _think(conn: _Conn, frames: _Frames, seconds: float) -> bool:
    """Send reasoning chunks for ``seconds``; return False if the client went away first."""
    if not seconds:
        return True
    start = time.monotonic()
    end, due = start + seconds, start + _THINK_INTERVAL
    while due <= end:
        if not _wait_until(conn, due):
            return False
        conn.sock.sendall(frames.reasoning())
        due += _THINK_INTERVAL
    return _wait_until(conn, end)


def _send_tokens(
    conn: _Conn,
    frames: _Frames,
    pieces: list[str],
    indexes: range,
    first_due: float,
    interval: float,
    record: dict,
) -> bool:
    """Send the given tokens on schedule; return False if the client went away."""
    # Each token is due at a fixed time from the first, so pauses do not add up into drift. The
    # ticker writes them; this greenlet only waits, and takes over a write that would block.
    job = _TokenJob(conn, frames, pieces, indexes, first_due, interval, record)
    try:
        while job.pos < len(indexes):
            job.handed_back.clear()
            _ticker().add(job)
            gevent.wait([job.handed_back, conn.gone], count=1)
            if not job.handed_back.is_set():
                return False  # the client left while its next token was waiting
            if job.error is not None:
                raise job.error
            if job.pending:
                conn.sock.sendall(job.pending)  # a slow reader: only this greenlet waits for it
                record["tokens_sent"] = job.pending_index + 1
                job.pending = b""
            if conn.gone.is_set():
                return False
        return True
    finally:
        job.cancelled = True  # the ticker must never write to this socket again


class _TokenJob:
    """One response's tokens, waiting in the ticker for their due times."""

    __slots__ = (
        "cancelled",
        "conn",
        "due",
        "error",
        "fd",
        "first_due",
        "frames",
        "handed_back",
        "indexes",
        "interval",
        "pending",
        "pending_index",
        "pieces",
        "pos",
        "record",
    )

    def __init__(
        self,
        conn: _Conn,
        frames: _Frames,
        pieces: list[str],
        indexes: range,
        first_due: float,
        interval: float,
        record: dict,
    ) -> None:
        self.conn, self.fd, self.frames, self.pieces = conn, conn.sock.fileno(), frames, pieces
        self.indexes, self.first_due, self.interval, self.record = indexes, first_due, interval, record
        self.pos = 0
        self.due = first_due + indexes[0] * interval if indexes else first_due
        self.handed_back = Event()  # set when the ticker is done with the job, for now or for good
        self.pending = b""  # the rest of a token that the socket would not take at once
        self.pending_index = 0
        self.error: OSError | None = None
        self.cancelled = False

    def send_due(self) -> bool:
        """Write the token that is due; return True if the job goes back into the ticker's queue."""
        if self.cancelled:
            return False
        if self.conn.gone.is_set():
            self.handed_back.set()
            return False
        index = self.indexes[self.pos]
        frame = self.frames.token(self.pieces[index])
        self.pos += 1
        try:
            # The socket is non-blocking under gevent: a write that would block returns short (or
            # raises BlockingIOError) instead of stalling every other stream behind this one.
            sent = os.write(self.fd, frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the client has gone
            self.error = exc
            self.handed_back.set()
            return False
        if sent < len(frame):
            self.pending, self.pending_index = frame[sent:], index
            self.handed_back.set()
            return False
        self.record["tokens_sent"] = index + 1
        if self.pos == len(self.indexes):
            self.handed_back.set()
            return False
        self.due = self.first_due + self.indexes[self.pos] * self.interval
        return True


class _Ticker:
    """One greenlet that writes every stream's due tokens, then sleeps until the next is due.

    One timer wake per round for all streams, instead of a timer and a greenlet switch per token per
    stream: at thousands of streams that was most of this server's CPU.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, _TokenJob]] = []  # a heap by due time
        self._order = itertools.count()  # breaks ties, so that jobs are never compared
        self._greenlet: gevent.Greenlet | None = None
        self._changed = Event()
        self._next_round = math.inf

    def add(self, job: _TokenJob) -> None:
        """Queue a job; wake the ticker if the job is due before its next round."""
        heapq.heappush(self._queue, (job.due, next(self._order), job))
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        elif job.due < self._next_round:
            self._changed.set()

    def _run(self) -> None:
        """Send what is due, round after round, until no job is left."""
        queue = self._queue
        while queue:
            now = time.monotonic()
            sent = 0
            # Behind schedule, a round stops after a bounded number of writes so that the watchers
            # and new connections still get their turn.
            while queue and queue[0][0] <= now and sent < _ROUND_LIMIT:
                job = heapq.heappop(queue)[2]
                if job.send_due():
                    heapq.heappush(queue, (job.due, next(self._order), job))
                sent += 1
            if not queue:
                break
            self._next_round = now if sent == _ROUND_LIMIT else max(queue[0][0], now + _TICK)
            self._changed.clear()
            self._changed.wait(max(0.0, self._next_round - time.monotonic()))
        self._next_round = math.inf


_TICKER: _Ticker | None = None


def _ticker() -> _Ticker:
    """Return the ticker, created on first use (importing this module starts nothing)."""
    global _TICKER
    if _TICKER is None:
        _TICKER = _Ticker()
    return _TICKER


def _wait_until(conn: _Conn, due: float) -> bool:
    """Wait until the monotonic time ``due``; return False if the client went away first."""
    delay = due - time.monotonic()
    if delay > 0:
        return not conn.gone.wait(delay)
    gevent.sleep(0)  # behind schedule: still let the other connections (and the watcher) run
    return not conn.gone.is_set()


# --- command line ---------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    """Tell whether a host name or address stays on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read and check the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m streamchat.fake_upstream",
        description="Serve a fake OpenAI-compatible streaming Chat Completions API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per answer")
    parser.add_argument("--tokens-per-second", type=float, default=20.0)
    parser.add_argument("--first-token-seconds", type=float, default=0.3)
    parser.add_argument("--model", default="fake-model", help="the model listed by GET /v1/models")
    parser.add_argument(
        "--allow-non-loopback", action="store_true", help="listen beyond 127.0.0.1 (it accepts any key)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.tokens <= _MAX_TOKENS:
        parser.error(f"--tokens must be between 0 and {_MAX_TOKENS}")
    if not (args.tokens_per_second > 0 and math.isfinite(args.tokens_per_second)):
        parser.error("--tokens-per-second must be a finite number above 0")
    if not 0 <= args.first_token_seconds <= 3600:
        parser.error("--first-token-seconds must be between 0 and 3600")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; return the exit code."""
    args = _parse_args(argv)
    if not args.allow_non_loopback and not _is_loopback(args.host):
        print(
            f"fake upstream: refusing to listen on {args.host!r}, not a loopback address "
            "(pass --allow-non-loopback if you really mean it)",
            file=sys.stderr,
        )
        return 2
    defaults = Script(tokens=args.tokens, tps=args.tokens_per_second, ttft=args.first_token_seconds)
    upstream = FakeUpstream(defaults, args.model)
    server = StreamServer((args.host, args.port), upstream.handle, backlog=1024)
    server.start()
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fake upstream listening on http://{host}:{server.server_port}/v1", flush=True)
    stop = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    server.stop()  # stop accepting; streams still open (a held stall, say) end with the process
    return 0


# --- for tests and benchmarks ---------------------------------------------------------------------------


class FakeUpstreamProcess:
    """Run the fake upstream as a child process on a free port; ``stop()`` (or ``with``) ends it."""

    def __init__(self, *args: str, startup_timeout: float = 10.0) -> None:
        command = [sys.executable, "-m", "streamchat.fake_upstream", "--port", "0", *args]
        root = Path(__file__).resolve().parent.parent  # so that `-m streamchat...` imports this checkout
        self.process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE)
        try:
            line = self._read_line(startup_timeout)
        except BaseException:
            self.stop()
            raise
        match = re.fullmatch(r"fake upstream listening on (http://[^\s/]+:(\d+)/v1)\n", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"unexpected first line from the fake upstream: {line!r}")
        self.base_url = match[1]
        self.port = int(match[2])
        self.root_url = self.base_url.removesuffix("/v1")
        # Never send requests for 127.0.0.1 through a proxy taken from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _read_line(self, timeout: float) -> str:
        """Read the listening line, or fail after ``timeout`` seconds."""
        stdout = self.process.stdout
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the fake upstream did not start within {timeout} s")
        line = stdout.readline().decode()
        if not line:
            raise RuntimeError(f"the fake upstream exited with code {self.process.wait()} before listening")
        return line

    def _call(self, method: str) -> list[dict]:
        """Send GET or DELETE to ``/_fake/requests`` and return the JSON answer."""
        request = urllib.request.Request(f"{self.root_url}/_fake/requests", method=method)
        with self._opener.open(request, timeout=5) as response:
            return json.load(response)

    def requests(self, tag: str | None = None) -> list[dict]:
        """Return the records of chat requests so far, only those with ``tag`` if given."""
        records = self._call("GET")
        return records if tag is None else [r for r in records if r["tag"] == tag]

    def clear(self) -> None:
        """Forget the records of earlier requests."""
        self._call("DELETE")

    def wait_for_outcome(self, tag: str, timeout: float = 2.0) -> dict:
        """Return the first record with ``tag`` once its outcome is known; TimeoutError if never."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.requests(tag):
                if record["outcome"] is not None:
                    return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"no finished request tagged {tag!r} after {timeout} s")
            time.sleep(0.01)

    def stop(self) -> int:
        """Stop the server (SIGINT, then SIGKILL after 5 s); return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    sys.exit(main())
