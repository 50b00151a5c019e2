"""The fake upstream's HTTP server: one connection at a time per greenlet, each request as scripted.

Where it sits: ``python -m fakeupstream`` (fakeupstream/__main__.py) serves ``FakeUpstream.handle``
with gevent's ``StreamServer``. For each chat request it reads the ``[fake ...]`` directive
(fakeupstream/script.py), then answers with an error body (fakeupstream/errors.py), a fault, or the
scripted stream of chunks (fakeupstream/frames.py), whose tokens the ticker writes on schedule
(fakeupstream/ticker.py). Every chat request leaves a record, served at ``GET /_fake/requests``.

Try it::

    python -m fakeupstream --port 8001 &
    curl -N http://127.0.0.1:8001/v1/chat/completions -H 'Authorization: Bearer fake' \\
        -d '{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi [fake tokens=5]"}]}'
    curl -s http://127.0.0.1:8001/_fake/requests

Deliberate choices:

- gevent's ``StreamServer`` and a hand-written HTTP/1.1 reader instead of a framework: the exact
  bytes on the wire are the point, and a benchmark drives thousands of streams through it at once.
  The framing rules (heads, request bodies, keep-alive, chunks) come from streamchat/http1.py, the
  one home of the project's HTTP/1.1 framing.
- While a response streams, a second greenlet per connection sits in ``recv``. A client that leaves
  is seen at once (EOF or reset), even while the writer sleeps between tokens or holds a stall.
- Nothing here patches the standard library: ``__main__`` does, before it serves, so tests can import
  the package unpatched.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
import time
from collections import deque
from http import HTTPStatus

import gevent
from gevent.event import Event

from fakeupstream.errors import CONTEXT_ERRORS, QUOTA_MESSAGE, STATUS_ERRORS, error_body
from fakeupstream.frames import (
    CONTENT_TYPE_BODY,
    ERROR_FRAME,
    GARBAGE_FRAME,
    Frames,
    json_bytes,
)
from fakeupstream.script import DirectiveError, Script, answer_tokens, parse_directive
from fakeupstream.ticker import send_tokens
from streamchat.http1 import (
    LAST_CHUNK,
    HeadTooLong,
    encode_chunk,
    keeps_alive,
    parse_request_head,
    request_framing,
    take_head,
)

HOLD_SECONDS = 300.0  # how long silent/stall hold a connection the client never closes
MAX_BODY = 16 * 1024 * 1024
MAX_RECORDS = 100_000  # a long benchmark must not grow the record list forever
RECV_SIZE = 65536
THINK_INTERVAL = 0.2  # seconds between reasoning chunks (think=F)


# --- HTTP/1.1, just enough ------------------------------------------------------------------------------


class _HttpError(Exception):
    """An error answered with a JSON body; ``close`` when the connection cannot be trusted after it."""

    def __init__(
        self,
        status: int,
        body: dict | bytes,  # an object to encode, or a recorded body sent byte for byte
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
    """One request, read whole: header names in lower case, the path without its query."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class Connection:
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
        data = self.sock.recv(RECV_SIZE)
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


def _read_request(conn: Connection) -> _Request | None:
    """Read one request; return None if the client closed the connection before sending one."""
    try:
        while (raw := take_head(conn.buf)) is None:
            if not conn.fill():
                return None
    except HeadTooLong:
        raise _HttpError(431, error_body("request headers too large"), close=True) from None
    try:
        head = parse_request_head(raw)
        framing = request_framing(head.fields)
    except ValueError as exc:
        raise _HttpError(400, error_body(str(exc)), close=True) from None
    if framing == "chunked":  # the OpenAI SDK never sends a chunked request
        raise _HttpError(501, error_body("chunked request bodies are not supported"), close=True)
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.fields}
    body = _read_body(conn, headers, framing)
    # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 clients get one response each.
    keep_alive = keeps_alive(head.version, head.fields)
    target = head.target.decode("latin-1")
    return _Request(head.method.decode("latin-1"), target.partition("?")[0], headers, body, keep_alive)


def _read_body(conn: Connection, headers: dict[str, str], length: int) -> bytes:
    """Read a body of ``length`` bytes, answering ``Expect: 100-continue`` first."""
    if length > MAX_BODY:
        raise _HttpError(413, error_body(f"body must be at most {MAX_BODY} bytes"), close=True)
    if length and headers.get("expect", "").lower() == "100-continue":
        conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this before big bodies
    while len(conn.buf) < length:
        if not conn.fill():
            raise _HttpError(400, error_body("body shorter than Content-Length"), close=True)
    body = bytes(conn.buf[:length])
    del conn.buf[:length]
    return body


def _response_head(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    """Return the status line and headers of a response."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send_json(
    conn: Connection, status: int, obj: object, keep_alive: bool, headers: list[tuple[str, str]] | None = None
) -> None:
    """Send a complete JSON response; ``obj`` is encoded, or sent as it is if it is bytes already."""
    body = obj if isinstance(obj, bytes) else json_bytes(obj)
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
        self.records: deque[dict] = deque(maxlen=MAX_RECORDS)
        self.count = 0
        self.connections = 0

    def handle(self, sock: socket.socket, address: object) -> None:
        """Serve requests on one connection until either side ends it (StreamServer then closes it)."""
        # Tokens are small writes; Nagle's algorithm would hold them back waiting for ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        conn = Connection(sock, self.connections)
        try:
            while self._serve_one(conn):
                pass
        except OSError:
            pass  # the client reset the connection: nobody is left to answer

    def _serve_one(self, conn: Connection) -> bool:
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
        _send_json(conn, status, error_body(message), request.keep_alive)
        return request.keep_alive

    def _models(self, conn: Connection, request: _Request) -> bool:
        """List the one model, as ``GET /v1/models`` does."""
        body = {
            "object": "list",
            "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}],
        }
        _send_json(conn, 200, body, request.keep_alive)
        return True

    def _list_records(self, conn: Connection, request: _Request) -> bool:
        """Send the records of every chat request so far."""
        _send_json(conn, 200, list(self.records), request.keep_alive)
        return True

    def _clear_records(self, conn: Connection, request: _Request) -> bool:
        """Forget the records."""
        self.records.clear()
        _send_json(conn, 200, [], request.keep_alive)
        return True

    def _chat(self, conn: Connection, request: _Request) -> bool:
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
            head = [("Content-Type", "application/json"), ("Content-Length", str(len(CONTENT_TYPE_BODY)))]
            conn.sock.sendall(_response_head(200, head, request.keep_alive) + CONTENT_TYPE_BODY)
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
            raise _HttpError(401, error_body(message))
        try:
            body = json.loads(request.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _HttpError(
                400, error_body(f"We could not parse the JSON body of your request: {exc}")
            ) from None
        if not isinstance(body, dict):
            raise _HttpError(400, error_body("the request body must be a JSON object"))
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise _HttpError(400, error_body("you must provide a model parameter"))
        record["model"] = model
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _HttpError(400, error_body("messages must be a list of objects"))
        if body.get("stream") is not True:
            raise _HttpError(400, error_body("this fake upstream only streams: set stream to true"))
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise _HttpError(400, error_body("stream_options must be an object"))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise _HttpError(400, error_body(f"max_tokens must be a positive integer, got {limit!r}"))

        texts = [_text_of(m) for m in messages]
        pairs = zip(reversed(messages), reversed(texts), strict=True)
        last_user = next((text for message, text in pairs if message.get("role") == "user"), "")
        try:
            script, rest = parse_directive(last_user, self.defaults)
        except DirectiveError as exc:
            record["tag"] = exc.tag
            raise _HttpError(400, error_body(f"fake upstream directive: {exc}")) from None
        record.update(tag=script.tag, fault=script.fault)
        _raise_http_fault(script)

        count = (len(rest) + 3) // 4 if script.echo else script.tokens  # echo: pieces of 4 code points
        finish = script.finish
        if limit is not None and limit < count:
            count, finish = limit, "length"
        # Only the pieces that will be sent are made: a million tokens cut to max_tokens=3 make three.
        # Echo's pieces are 4 code points, so never half a character.
        pieces = [rest[i : i + 4] for i in range(0, 4 * count, 4)] if script.echo else answer_tokens(count)
        # A rough count: whitespace-separated words in every message, the directive left out.
        prompt_tokens = sum(len(t.split()) for t in texts) - len(last_user.split()) + len(rest.split())
        include_usage = options.get("include_usage") is True
        return _Plan(script, model, pieces, finish, include_usage, prompt_tokens)

    def _stream(self, conn: Connection, request: _Request, plan: _Plan, record: dict) -> bool:
        """Send the scripted stream; return whether the connection can serve another request."""
        frames = Frames(
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
    body: dict | bytes
    if script.fault == "status":
        status = script.status
        type_, code, message = STATUS_ERRORS[status]
        body = error_body(message, type_, code)
    elif script.fault == "context":
        status, body = 400, CONTEXT_ERRORS[script.dialect]  # sent byte for byte, as recorded
    elif script.fault == "quota":
        status, body = 429, error_body(QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota")
    else:
        return
    retry_after = script.retry_after
    if retry_after is None and script.fault == "status" and status == 429:
        retry_after = 1
    if retry_after is not None:
        headers.append(("Retry-After", f"{retry_after:g}"))
    if script.no_retry:
        headers.append(("x-should-retry", "false"))  # the OpenAI SDK obeys this over its own rules
    raise _HttpError(status, body, headers)


def _play(conn: Connection, head: bytes, plan: _Plan, frames: Frames, record: dict) -> tuple[str, str | None]:
    """Write the stream as scripted; return the outcome and the abrupt ending to apply, if any."""
    script, pieces = plan.script, plan.pieces
    fault = script.fault
    conn.sock.sendall(head + frames.role())  # headers and the role chunk go out at once, as OpenAI's do
    if not _think(conn, frames, script.think):
        return "client_closed", None
    first_due = time.monotonic() + script.ttft
    interval = 1 / script.tps
    cut = len(pieces) if fault is None else 0 if fault == "silent" else min(script.after, len(pieces))
    if not send_tokens(conn, frames, pieces, range(cut), first_due, interval, record):
        return "client_closed", None
    if fault is not None:
        # The fault strikes when token number `cut` would have been due: the server died while
        # "generating" it, not in the same instant as the last token it sent.
        if not _wait_until(conn, first_due + cut * interval):
            return "client_closed", None
        if fault in ("drop", "reset"):
            return "fault", fault
        if fault in ("silent", "stall"):
            return ("client_closed", None) if conn.gone.wait(HOLD_SECONDS) else ("fault", "drop")
        if fault == "error_object":
            conn.sock.sendall(encode_chunk(ERROR_FRAME) + LAST_CHUNK)
            return "fault", None
        if fault == "no_done":
            conn.sock.sendall(LAST_CHUNK)
            return "fault", None
        conn.sock.sendall(frames.interlude() if fault == "null_delta" else encode_chunk(GARBAGE_FRAME))
    if not send_tokens(conn, frames, pieces, range(cut, len(pieces)), first_due, interval, record):
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


def _think(conn: Connection, frames: Frames, seconds: float) -> bool:
    """Send reasoning chunks for ``seconds``; return False if the client went away first."""
    if not seconds:
        return True
    start = time.monotonic()
    end, due = start + seconds, start + THINK_INTERVAL
    while due <= end:
        if not _wait_until(conn, due):
            return False
        conn.sock.sendall(frames.reasoning())
        due += THINK_INTERVAL
    return _wait_until(conn, end)


def _wait_until(conn: Connection, due: float) -> bool:
    """Wait until the monotonic time ``due``; return False if the client went away first."""
    delay = due - time.monotonic()
    if delay > 0:
        return not conn.gone.wait(delay)
    gevent.sleep(0)  # behind schedule: still let the other connections (and the watcher) run
    return not conn.gone.is_set()
