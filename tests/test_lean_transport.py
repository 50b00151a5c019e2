"""The lean HTTP/1.1 transport (streamchat/providers/lean_transport.py): framing in use, pool, failures.

The framing rules themselves are pure functions with their own tables (tests/test_http1.py). Here
everything runs over real sockets on 127.0.0.1 against a tiny scripted server: each test says which
bytes the server sends for each request, in which pieces, and whether it then hangs up. (The provider
tests drive the same transport through the openai SDK against the fake upstream.)
"""

import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import pytest
from helpers import free_port

from streamchat.providers.lean_transport import LeanTransport, PreparedRequest, _Connection


class ScriptedServer:
    """Answers each request on 127.0.0.1 with the next scripted response.

    A response is a list of byte pieces, sent one write each; at ``HANG_UP`` the server closes that
    connection, and at ``HOLD`` it waits for the client to close it. ``connections`` and
    ``requests`` count what it accepted and read; ``received`` keeps each request's exact bytes.
    """

    HANG_UP = b""
    HOLD = b"hold"

    def __init__(self, responses: list[list[bytes]]) -> None:
        self.responses = list(responses)
        self.connections = 0
        self.requests = 0
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.responses:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.responses and (raw := _read_request(conn)) is not None:
                    self.requests += 1
                    self.received.append(raw)
                    if not self._answer(conn, self.responses.pop(0)):
                        break

    def _answer(self, conn: socket.socket, pieces: list[bytes]) -> bool:
        for piece in pieces:
            if piece == self.HANG_UP:
                return False
            if piece == self.HOLD:
                conn.recv(1)  # until the client hangs up
                return False
            conn.sendall(piece)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() (Linux)
        self.listener.close()
        self._thread.join(timeout=5)


def _read_request(conn: socket.socket) -> bytes | None:
    """Read one request (head and Content-Length body) and return it; None if the client hung up."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return None
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@contextmanager
def _client(
    *responses: list[bytes], read_timeout: float = 5.0
) -> Iterator[tuple[httpx2.Client, ScriptedServer]]:
    """Yield an httpx2 client over a LeanTransport, and the scripted server it talks to."""
    server = ScriptedServer(list(responses))
    timeout = httpx2.Timeout(connect=2.0, read=read_timeout, write=2.0, pool=2.0)
    client = httpx2.Client(
        transport=LeanTransport(), timeout=timeout, base_url=f"http://127.0.0.1:{server.port}"
    )
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def _ok(body: bytes, *headers: bytes) -> bytes:
    """A 200 response with a Content-Length body."""
    extra = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_lean_transport_streams_chunked_pieces_as_they_come():
    pieces = [CHUNKED_HEAD, b"5\r\nHel", b"lo\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]
    with _client(pieces) as (client, _), client.stream("POST", "/x", content=b"{}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert b"".join(response.iter_raw()) == b"Hello world"


def test_lean_transport_keeps_the_connection_alive():
    with _client([_ok(b"one")], [_ok(b"two")]) as (client, server):
        assert client.post("/a", content=b"x").content == b"one"
        assert client.get("/b").content == b"two"
        assert server.connections == 1


def test_lean_transport_takes_a_new_connection_after_the_server_closed_the_idle_one():
    with _client([_ok(b"one"), ScriptedServer.HANG_UP], [_ok(b"two")]) as (client, server):
        assert client.get("/a").content == b"one"
        time.sleep(0.05)  # the server's close arrives (one that races a request fails it instead)
        assert client.get("/b").content == b"two"
        assert server.connections == 2


def test_lean_transport_never_sends_a_request_twice():
    # The server takes the second request on the kept connection, then hangs up without answering.
    # It may have started on it (a model would be generating), so it must not be sent again.
    with _client([_ok(b"one")], [ScriptedServer.HANG_UP], [_ok(b"never")]) as (client, server):
        assert client.post("/a", content=b"x").content == b"one"
        with pytest.raises(httpx2.RemoteProtocolError):
            client.post("/b", content=b"y")
        assert (server.requests, server.connections) == (2, 1)


def test_lean_transport_release_closes_expired_idle_connections():
    transport = LeanTransport(keepalive_expiry=0.05)
    origin = ("http", "127.0.0.1", 1)
    pairs = [socket.socketpair() for _ in range(2)]
    old, new = (_Connection(pair[0], origin) for pair in pairs)
    try:
        transport.release(old)
        time.sleep(0.1)
        transport.release(new)  # the newest goes on top; the expired one below it is closed now
        assert list(transport._idle[origin]) == [new]
        assert old.sock.fileno() == -1
    finally:
        transport.close()
        for pair in pairs:
            pair[1].close()


def test_lean_transport_transfer_encoding_over_several_header_lines():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n"
    with _client([head, b"2\r\nok\r\n0\r\n\r\n"]) as (client, _), client.stream("GET", "/a") as response:
        assert b"".join(response.iter_raw()) == b"ok"


def test_lean_transport_never_reuses_after_connection_close():
    with _client([_ok(b"one", b"Connection: close")], [_ok(b"two")]) as (client, server):
        assert client.get("/a").content == b"one"
        assert client.get("/b").content == b"two"
        assert server.connections == 2


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\none",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n",
    ],
    ids=["HTTP/1.0 asking for keep-alive", "both framings"],
)
def test_lean_transport_never_reuses_a_connection_it_cannot_trust(response):
    with _client([response], [_ok(b"two")]) as (client, server):
        assert client.get("/a").content == b"one"
        assert client.get("/b").content == b"two"
        assert server.connections == 2


def test_lean_transport_body_until_close_and_interim_responses():
    response = [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nall ", b"of it", ScriptedServer.HANG_UP]
    with _client(response) as (client, _):
        reply = client.get("/a")
        assert (reply.status_code, reply.content) == (200, b"all of it")


def test_lean_transport_error_status_body_is_read():
    response = [b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}"]
    with _client(response) as (client, _):
        reply = client.get("/a")
        assert (reply.status_code, reply.headers["retry-after"], reply.content) == (429, "7", b"{}")


def test_lean_transport_cut_mid_body_is_a_remote_protocol_error():
    with (
        _client([CHUNKED_HEAD, b"5\r\nHel", ScriptedServer.HANG_UP]) as (client, _),
        client.stream("GET", "/a") as response,
        pytest.raises(httpx2.RemoteProtocolError),
    ):
        b"".join(response.iter_raw())


def test_lean_transport_silence_is_a_read_timeout():
    with (
        _client([CHUNKED_HEAD, ScriptedServer.HOLD], read_timeout=0.2) as (client, _),
        client.stream("GET", "/a") as response,
        pytest.raises(httpx2.ReadTimeout),
    ):
        b"".join(response.iter_raw())


@pytest.mark.parametrize(
    "response",
    [b"HTTP/1.1 OK\r\n\r\n", b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"],
    ids=["no status code", "not HTTP/1", "header without colon"],
)
def test_lean_transport_bad_head_is_a_remote_protocol_error(response):
    with _client([response]) as (client, _), pytest.raises(httpx2.RemoteProtocolError):
        client.get("/a")


def test_lean_transport_refused_connect_is_a_connect_error():
    with httpx2.Client(transport=LeanTransport()) as client, pytest.raises(httpx2.ConnectError):
        client.get(f"http://127.0.0.1:{free_port()}/")


def test_lean_transport_works_with_descriptors_above_1024():
    # A worker holding thousands of streams has socket numbers far above select()'s limit of 1024:
    # nothing in the transport may rely on select() (an early version did, to check pooled sockets).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1300:
        pytest.skip(f"the open-file hard limit ({hard}) is too low to hold 1,300 files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        stream = [CHUNKED_HEAD, b"2\r\nok\r\n", b"0\r\n\r\n"]
        with _client(stream, [_ok(b"again")]) as (client, server):
            with client.stream("GET", "/a") as response:
                assert b"".join(response.iter_raw()) == b"ok"
            assert client.get("/b").content == b"again"
            assert server.connections == 1
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_lean_transport_sends_head_length_and_body_as_one_exact_buffer():
    with _client([_ok(b"a")], [_ok(b"b")]) as (client, server):
        client.post("/v1/x", content=b'{"a":1}', headers={"X-Test": "1"}).read()
        client.get("/v1/y").read()
    post, get = server.received
    assert post.startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"\r\nX-Test: 1\r\n" in post
    # httpx's own Content-Length is replaced by the transport's, which comes last, before the body.
    assert post.count(b"Content-Length") == 1
    assert post.endswith(b'\r\nContent-Length: 7\r\n\r\n{"a":1}')
    assert get.startswith(b"GET /v1/y HTTP/1.1\r\n") and get.endswith(b"\r\n\r\n")
    assert b"Content-Length" not in get  # a GET without a body says nothing of its length


def test_lean_transport_prepared_request_sends_each_body_after_the_same_head():
    server = ScriptedServer([[_ok(b"1")], [_ok(b"2")]])
    transport = LeanTransport()
    template = httpx2.Request(
        "POST",
        f"http://127.0.0.1:{server.port}/v1/chat/completions",
        headers={"Authorization": "Bearer k"},
        extensions={"timeout": {"connect": 2.0, "read": 5.0, "write": 2.0, "pool": 2.0}},
    )
    prepared = PreparedRequest(template)
    try:
        for body in (b"first", b"second!"):
            response = transport.send(prepared, body)
            assert response.read() in (b"1", b"2")
            response.close()
    finally:
        transport.close()
        server.close()
    first, second = server.received
    head = first[: first.index(b"Content-Length")]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer k\r\n" in head
    assert first == head + b"Content-Length: 5\r\n\r\nfirst"
    assert second == head + b"Content-Length: 7\r\n\r\nsecond!"
    assert server.connections == 1  # the second went on the kept-alive connection
