"""A lean HTTP/1.1 transport for the openai SDK: the SDK's own requests, read at a fraction of the cost.

Where it sits: openai_compatible.py hands it to the SDK as ``http_client=httpx2.Client(transport=...)``,
and also uses it directly: the Chat Completions request is prepared once per client from the SDK's
URL and headers (``PreparedRequest``), and each run's body goes out with it through ``send``.
Requests the SDK builds itself (with OPENAI_MAX_RETRIES above 0) come through ``handle_request``,
httpx's interface. Either way this module only moves the bytes to and from the model server.

Why: the benchmark's per-token figures (docs/performance.md) showed that reading the SDK's streaming
response through the default transport (httpcore and h11) costs about 85 µs of CPU per chunk under
gevent, and a bare gevent socket about 20 µs. A streaming chat completion is the simplest case of
HTTP/1.1: one request, then a body read as it comes. Here a piece of body costs one ``recv`` and a
few slices.

What it does: HTTP/1.1 over TCP or TLS with the stdlib's ``socket`` and ``ssl`` (which gevent's
monkey-patching makes cooperative), a keep-alive pool per origin, bodies framed by chunked encoding,
Content-Length or the connection's close, the connect, read and write timeouts the SDK asks for,
and failures raised as httpx2's exceptions, which the SDK maps as it always does. The framing rules
themselves (heads, chunked coding, where a body ends, keep-alive) are pure functions in
streamchat/http1.py, shared with the fake upstream and the load generator.

What it does not do: HTTP/2, proxies, or streamed request bodies (the SDK sends JSON bytes). Set
OPENAI_TRANSPORT=httpx to use httpx's own transport where you need those.

Try it: the provider tests run every upstream fault through it (tests/test_openai_provider.py),
tests/test_lean_transport.py covers the pool and the failures against a scripted server, and
tests/test_http1.py the framing, byte for byte.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator

import httpx2

from streamchat.http1 import (
    ChunkedDecoder,
    HeadTooLong,
    ResponseHead,
    keeps_alive,
    parse_response_head,
    response_framing,
    take_head,
)

RECV_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _StaleConnection(Exception):
    """A pooled connection failed before the request left: it can go on a new connection."""


class _Connection:
    """One socket to an origin, with the bytes received but not consumed yet."""

    def __init__(self, sock: socket.socket, origin: tuple[str, str, int]) -> None:
        self.sock = sock
        self.origin = origin
        self.buffer = bytearray()
        self.idle_since = 0.0

    def recv(self) -> bytes:
        """Receive what is there (waiting for at least one byte); b"" at EOF."""
        return self.sock.recv(RECV_BYTES)

    def recv_ready(self) -> bytes:
        """Receive what is already there without waiting; raise BlockingIOError if nothing is."""
        self.sock.settimeout(0)  # gevent's sockets and TLS ones raise at once then, as plain ones do
        return self.sock.recv(RECV_BYTES)

    def still_open(self) -> bool:
        """Check, without waiting, that an idle connection has nothing to read: no close, no junk.

        No select() here: a worker with thousands of streams has descriptors above its limit of 1024.
        """
        try:
            self.sock.settimeout(0)
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.recv(1)  # TLS has no peek; any byte here makes the connection unusable
            else:
                self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True  # nothing to read: alive and quiet
        except OSError:
            return False
        return False  # b"": the server closed it; anything else: bytes nobody asked for

    def close(self) -> None:
        self.sock.close()


class LeanTransport(httpx2.BaseTransport):
    """HTTP/1.1 for the SDK's requests, with a keep-alive pool per origin."""

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 100,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_idle_per_origin = max_idle_per_origin
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send the request and return the response as soon as its head has arrived."""
        return self.send(PreparedRequest(request), request.read())

    def send(self, prepared: PreparedRequest, body: bytes) -> httpx2.Response:
        """Send a prepared request with ``body``; return the response once its head has arrived."""
        request, origin, timeouts = prepared.request, prepared.origin, prepared.timeouts
        if body or prepared.has_body:
            payload = b"%sContent-Length: %d\r\n\r\n%s" % (prepared.head, len(body), body)
        else:
            payload = prepared.head + b"\r\n"
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return self._exchange(conn, request, payload, timeouts, reused=True)
            except _StaleConnection:
                pass  # the send itself failed, so the request never left: go again, once
        conn = self._connect(origin, timeouts, request)
        return self._exchange(conn, request, payload, timeouts, reused=False)

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # --- connections ----------------------------------------------------------------------------

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        """Return the most recently used idle connection to ``origin`` that is still good, or None.

        A request is never sent twice once it may have reached the server: so a pooled connection
        is checked before use, and only a send that fails outright is retried on a new one.
        """
        while True:
            with self._lock:
                conns = self._idle.get(origin)
                if not conns:
                    return None
                conn = conns.pop()
            if time.monotonic() - conn.idle_since < self.keepalive_expiry and conn.still_open():
                return conn
            conn.close()

    def release(self, conn: _Connection) -> None:
        """Keep a connection whose response was read to the end; close the expired ones."""
        now = conn.idle_since = time.monotonic()
        expired = []
        with self._lock:
            conns = self._idle.setdefault(conn.origin, deque())
            # The oldest sit at the left and _take_idle takes from the right: drop them from here.
            while conns and now - conns[0].idle_since >= self.keepalive_expiry:
                expired.append(conns.popleft())
            if len(conns) < self.max_idle_per_origin:
                conns.append(conn)
            else:
                expired.append(conn)
        for old in expired:
            old.close()

    def _connect(self, origin: tuple[str, str, int], timeouts: dict, request: httpx2.Request) -> _Connection:
        """Open a TCP connection (and TLS over it for https)."""
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeout=timeouts.get("connect"))
        except TimeoutError as err:
            raise httpx2.ConnectTimeout(f"connect to {host}:{port} timed out", request=request) from err
        except OSError as err:  # refused, unreachable, DNS
            raise httpx2.ConnectError(f"connect to {host}:{port} failed: {err}", request=request) from err
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._ssl_context is None:
                    self._ssl_context = httpx2.create_ssl_context()
                sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
        except TimeoutError as err:
            sock.close()
            raise httpx2.ConnectTimeout(f"TLS with {host}:{port} timed out", request=request) from err
        except OSError as err:  # ssl.SSLError is one
            sock.close()
            raise httpx2.ConnectError(f"TLS with {host}:{port} failed: {err}", request=request) from err
        except BaseException:  # a stop, say: never leave the socket to the garbage collector
            sock.close()
            raise
        return _Connection(sock, origin)

    # --- one exchange ---------------------------------------------------------------------------

    def _exchange(
        self, conn: _Connection, request: httpx2.Request, payload: bytes, timeouts: dict, *, reused: bool
    ) -> httpx2.Response:
        """Send the request on ``conn`` and read the response's head; close ``conn`` on any failure.

        Closing matters most for a stop or a first-token timeout thrown in while we wait for the
        head: the model server only stops generating when it sees the connection close.
        """
        try:
            conn.sock.settimeout(timeouts.get("write"))
            try:
                conn.sock.sendall(payload)
            except TimeoutError as err:
                raise httpx2.WriteTimeout("write timed out", request=request) from err
            except OSError as err:
                if reused:
                    raise _StaleConnection from err
                raise httpx2.WriteError(f"write failed: {err}", request=request) from err
            conn.sock.settimeout(timeouts.get("read"))
            head = _read_head(conn, request)
        except BaseException:
            conn.close()
            raise
        framing = response_framing(head.status, head.fields, head_request=request.method == "HEAD")
        body = _Body(self, conn, framing, keeps_alive(head.version, head.fields))
        return httpx2.Response(
            head.status,
            headers=head.fields,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )


class PreparedRequest:
    """A request's head as bytes, its origin and timeouts: worked out once, sent with many bodies.

    The SDK's requests to one endpoint differ only in their body, so openai_compatible.py prepares
    one (ChatCompletionsEndpoint) and each run sends ``head + Content-Length + body`` in one write:
    no request object to build, no headers to normalise again. ``handle_request`` prepares each
    request it is given the same way. The request is kept for httpx2's exceptions, which name it.
    """

    __slots__ = ("has_body", "head", "origin", "request", "timeouts")

    def __init__(self, request: httpx2.Request) -> None:
        scheme = request.url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        self.request = request
        self.origin = (scheme, request.url.host, request.url.port or _DEFAULT_PORTS[scheme])
        self.timeouts = request.extensions.get("timeout", {})
        self.has_body = request.method in ("POST", "PUT", "PATCH")  # a Content-Length, even of 0
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
        for name, value in request.headers.raw:
            # The body is sent whole: its length replaces any framing the request carried.
            if name.lower() not in (b"content-length", b"transfer-encoding"):
                lines.append(name + b": " + value + b"\r\n")
        self.head = b"".join(lines)


def _read_head(conn: _Connection, request: httpx2.Request) -> ResponseHead:
    """Read the response's status line and headers (skipping any 1xx responses)."""
    while True:
        try:
            while (raw := take_head(conn.buffer)) is None:
                data = _recv(conn, request)
                if not data:
                    message = "server disconnected without a response"
                    raise httpx2.RemoteProtocolError(message, request=request)
                conn.buffer += data
        except HeadTooLong:
            raise httpx2.RemoteProtocolError("response head too long", request=request) from None
        try:
            head = parse_response_head(raw)
        except ValueError as err:
            raise httpx2.RemoteProtocolError(str(err), request=request) from None
        if head.status >= 200:  # 100 Continue and friends come first: the real response follows
            return head


def _recv(conn: _Connection, request: httpx2.Request | None) -> bytes:
    """Receive from the connection, raising httpx2's exceptions."""
    try:
        return conn.recv()
    except TimeoutError as err:
        raise httpx2.ReadTimeout("read timed out", request=request) from err
    except OSError as err:
        raise httpx2.ReadError(f"read failed: {err}", request=request) from err


class _Body(httpx2.SyncByteStream):
    """A response body read from the socket as it arrives; closing it early closes the connection.

    It holds no reference to the request: an open stream should keep only what it still reads, and
    the request (its URL, headers and body) is several KB per stream (the benchmark's memory per
    open stream, docs/performance.md). Its errors carry no request either; httpx's Response, when
    it reads this body, attaches its own.
    """

    def __init__(
        self, transport: LeanTransport, conn: _Connection, framing: int | str, keep_alive: bool
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._keep_alive = keep_alive and framing != "close"
        self._chunks = ChunkedDecoder() if framing == "chunked" else None
        self._left = framing if isinstance(framing, int) else None  # bytes left of a sized body
        self._complete = framing == 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        conn = self._conn
        while not self._complete:
            if conn.buffer:
                piece = self._consume()
                if piece:
                    yield piece
                if self._complete:
                    break
            data = _recv(conn, None)
            if not data:
                if self._chunks is None and self._left is None:
                    self._complete = True  # a body framed by the close has ended
                    break
                raise httpx2.RemoteProtocolError(
                    "server disconnected before the end of the body", request=None
                )
            conn.buffer += data
        self.close()

    def _consume(self) -> bytes:
        """Take the body bytes out of the buffer; mark the body complete at its end."""
        conn = self._conn
        if self._chunks is not None:
            try:
                piece, self._complete = self._chunks.decode(conn.buffer)
            except ValueError as err:
                raise httpx2.RemoteProtocolError(str(err), request=None) from None
            return piece
        if self._left is None:
            piece = bytes(conn.buffer)
            conn.buffer.clear()
            return piece
        piece = bytes(conn.buffer[: self._left])
        del conn.buffer[: self._left]
        self._left -= len(piece)
        self._complete = self._left == 0
        return piece

    def close(self) -> None:
        """Give the connection back if the body was read to its end; close it otherwise.

        Closing mid-body is how a stop reaches the model server: it sees the connection close and
        stops generating. Just before, the bytes already here are read without waiting, since the
        body's last chunk often follows ``[DONE]`` at once, and then the connection can be reused.
        """
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if not self._complete and self._keep_alive:
            self._finish_without_waiting()
        if self._complete and self._keep_alive and not conn.buffer:
            self._transport.release(conn)
        else:
            conn.close()

    def _finish_without_waiting(self) -> None:
        """Read what is already here, without waiting: the body may end within it."""
        try:
            self._consume()
            for _ in range(4):  # a few reads at most: over TLS, each returns one record
                if self._complete:
                    return
                data = self._conn.recv_ready()
                if not data:
                    return
                self._conn.buffer += data
                self._consume()
        except (OSError, httpx2.RemoteProtocolError):  # BlockingIOError: nothing there yet
            return  # not complete: the connection is closed
