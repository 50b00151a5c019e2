"""HTTP/1.1 framing (streamchat/http1.py): tables of exact bytes in, exact values or bytes out.

The module is pure, so every rule gets a table: chunk encoding, the incremental chunked decoder (fed
a body cut at every position, and one byte at a time), request and response heads, where a body
ends, and when a connection may carry another message. Its three users (the lean transport, the fake
upstream and the load generator) are tested over real sockets in their own test files.

Run: ``python -m pytest tests/test_http1.py -q``
"""

import itertools

import pytest

from streamchat.http1 import (
    LAST_CHUNK,
    MAX_HEAD_BYTES,
    ChunkedDecoder,
    HeadTooLong,
    RequestHead,
    ResponseHead,
    encode_chunk,
    keeps_alive,
    parse_chunk_size,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
    take_head,
)

# Three chunks (one with an extension), then the last chunk with a trailer field.
CHUNKED_BODY = b"5\r\nHello\r\n1;ext=1\r\n,\r\n7\r\n world!\r\n0\r\nTrailer: x\r\n\r\n"
# Two SSE frames as the fake upstream sends them: one chunk each, then the last chunk.
SSE_BODY = b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n"


def _decode(pieces: list[bytes]) -> tuple[bytes, bool, bytes]:
    """Feed the pieces to one decoder as they would arrive; return data, ended, and leftover bytes."""
    decoder = ChunkedDecoder()
    buffer = bytearray()
    data = b""
    ended = False
    for piece in pieces:
        buffer += piece
        got, ended = decoder.decode(buffer)
        data += got
    return data, ended, bytes(buffer)


# --- encoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "chunk"),
    [
        (b"Hello", b"5\r\nHello\r\n"),
        (b"x" * 16, b"10\r\n" + b"x" * 16 + b"\r\n"),
        (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
        (b"\r\n", b"2\r\n\r\n\r\n"),
        ("é🚀".encode(), b"6\r\n\xc3\xa9\xf0\x9f\x9a\x80\r\n"),  # the size counts bytes, not characters
        (b"data: [DONE]\n\n", b"e\r\ndata: [DONE]\n\n\r\n"),
    ],
)
def test_encode_chunk_is_hex_size_crlf_data_crlf(data, chunk):
    assert encode_chunk(data) == chunk


def test_last_chunk_is_a_zero_size_chunk_and_an_empty_trailer():
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert _decode([encode_chunk(b"ok") + LAST_CHUNK]) == (b"ok", True, b"")


# --- the chunked decoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", range(len(CHUNKED_BODY) + 1))
def test_chunked_decoder_any_cut(cut):
    assert _decode([CHUNKED_BODY[:cut], CHUNKED_BODY[cut:]]) == (b"Hello, world!", True, b"")


def test_chunked_decoder_any_two_cuts():
    for first, second in itertools.combinations(range(len(SSE_BODY) + 1), 2):
        pieces = [SSE_BODY[:first], SSE_BODY[first:second], SSE_BODY[second:]]
        assert _decode(pieces) == (b"data: one\n\ndata: two\n\n", True, b""), (first, second)


@pytest.mark.parametrize("body", [CHUNKED_BODY, SSE_BODY], ids=["extensions and trailers", "sse frames"])
def test_chunked_decoder_one_byte_at_a_time(body):
    expected = b"Hello, world!" if body is CHUNKED_BODY else b"data: one\n\ndata: two\n\n"
    assert _decode([body[i : i + 1] for i in range(len(body))]) == (expected, True, b"")


@pytest.mark.parametrize(
    ("pieces", "result"),
    [
        ([b"0\r\n\r\n"], (b"", True, b"")),
        ([b"A\r\n0123456789\r\n0\r\n\r\n"], (b"0123456789", True, b"")),  # upper-case hex
        ([b"a\r\n0123456789\r\n0\r\n\r\n"], (b"0123456789", True, b"")),
        ([b"3 ; name=value\r\nabc\r\n0\r\n\r\n"], (b"abc", True, b"")),  # an extension, spaces before it
        ([b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK"], (b"ok", True, b"HTTP/1.1 200 OK")),  # the next response
        ([b"2\r\nok\r\n0\r\nA: 1\r\nB: 2\r\n\r\n"], (b"ok", True, b"")),  # trailers, dropped
        ([b"5\r\nHel"], (b"Hel", False, b"")),  # data is handed on as it comes
        ([b"5\r\nHello\r"], (b"Hello", False, b"\r")),  # half of the CRLF after the data waits
        ([b"5"], (b"", False, b"5")),  # half a size line waits
        ([b"2\r\nok\r\n0\r\n"], (b"ok", False, b"")),  # the last chunk, but not yet its empty line
    ],
    ids=[
        "empty body",
        "upper-case hex",
        "lower-case hex",
        "extension",
        "next response left",
        "trailers",
        "partial data",
        "partial crlf",
        "partial size",
        "no final line yet",
    ],
)
def test_chunked_decoder_table(pieces, result):
    assert _decode(pieces) == result


def test_chunked_decoder_after_the_end_takes_nothing():
    decoder, buffer = ChunkedDecoder(), bytearray(b"0\r\n\r\n")
    assert decoder.decode(buffer) == (b"", True)
    buffer += b"2\r\nno\r\n"
    assert decoder.decode(buffer) == (b"", True)
    assert buffer == b"2\r\nno\r\n"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"zz\r\n", "bad chunk size line b'zz'"),
        (b"+5\r\nHello\r\n", "bad chunk size line b'+5'"),
        (b"0x5\r\nHello\r\n", "bad chunk size line b'0x5'"),
        (b"-1\r\n", "bad chunk size line b'-1'"),
        (b"1" * 16 + b"\r\n", "bad chunk size line b'1111111111111111'"),  # 16 hex digits: too big
        (b"5\r\nHello!\r\n", "chunk data longer than its size"),
        (b"\r\n", "bad chunk size line b''"),
        (b"1" * (MAX_HEAD_BYTES + 1), "chunk size line too long"),
    ],
    ids=["not hex", "plus sign", "0x prefix", "negative", "too big", "data too long", "empty", "endless"],
)
def test_chunked_decoder_refuses_bad_framing(body, error):
    with pytest.raises(ValueError) as info:
        _decode([body])
    assert str(info.value) == error


@pytest.mark.parametrize(
    ("line", "size"),
    [(b"0", 0), (b"f", 15), (b"FF", 255), (b"10;x=y", 16), (b"7fffffffffffffff"[:15], 0x7FFFFFFFFFFFFFF)],
)
def test_parse_chunk_size(line, size):
    assert parse_chunk_size(bytearray(line)) == size


# --- heads -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"HTTP/1.1 200 OK", ResponseHead(b"HTTP/1.1", 200, b"OK", [])),
        (
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\ncontent-length:2",
            ResponseHead(
                b"HTTP/1.1", 429, b"Too Many Requests", [(b"Retry-After", b"7"), (b"content-length", b"2")]
            ),
        ),
        (b"HTTP/1.0 204", ResponseHead(b"HTTP/1.0", 204, b"", [])),  # the reason phrase is optional
        (
            b"HTTP/1.1 200 \r\nX-Empty:\r\nX: a:b ",
            ResponseHead(b"HTTP/1.1", 200, b"", [(b"X-Empty", b""), (b"X", b"a:b")]),
        ),
        (b"HTTP/1.1 100 Continue", ResponseHead(b"HTTP/1.1", 100, b"Continue", [])),
    ],
    ids=["bare", "fields in order, names as sent", "no reason", "empty and colon values", "interim"],
)
def test_parse_response_head(head, parsed):
    assert parse_response_head(head) == parsed


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (b"HTTP/1.1 OK", "bad status line b'HTTP/1.1 OK'"),
        (b"SPDY/3 200 OK", "bad status line b'SPDY/3 200 OK'"),
        (b"HTTP/2 200", "bad status line b'HTTP/2 200'"),
        (b"HTTP/1.1 600 Nope", "bad status line b'HTTP/1.1 600 Nope'"),
        (b"HTTP/1.1", "bad status line b'HTTP/1.1'"),
        (b"HTTP/1.1 200 OK\r\nno colon", "bad header line b'no colon'"),
        (b"HTTP/1.1 200 OK\r\nName : value", "bad header line b'Name : value'"),  # RFC 9112, 5.1
        (b"HTTP/1.1 200 OK\r\n: value", "bad header line b': value'"),
        (b"HTTP/1.1 200 OK\r\n\tfolded: x", "bad header line b'\\tfolded: x'"),
    ],
    ids=[
        "no code",
        "not http",
        "http/2",
        "code too big",
        "no code at all",
        "no colon",
        "space before colon",
        "no name",
        "obsolete fold",
    ],
)
def test_parse_response_head_refuses(head, error):
    with pytest.raises(ValueError) as info:
        parse_response_head(head)
    assert str(info.value) == error


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2",
            RequestHead(
                b"POST",
                b"/v1/chat/completions?x=1",
                b"HTTP/1.1",
                [(b"Host", b"127.0.0.1"), (b"Content-Length", b"2")],
            ),
        ),
        (b"GET / HTTP/1.0", RequestHead(b"GET", b"/", b"HTTP/1.0", [])),
    ],
)
def test_parse_request_head(head, parsed):
    assert parse_request_head(head) == parsed


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (b"GET /", "bad request line b'GET /'"),
        (b"GET  / HTTP/1.1", "bad request line b'GET  / HTTP/1.1'"),
        (b"GET / HTTP/2.0", "bad request line b'GET / HTTP/2.0'"),
        (b"GET / HTTP/1.1 extra", "bad request line b'GET / HTTP/1.1 extra'"),
        (b"GET / HTTP/1.1\r\nHost", "bad header line b'Host'"),
    ],
)
def test_parse_request_head_refuses(head, error):
    with pytest.raises(ValueError) as info:
        parse_request_head(head)
    assert str(info.value) == error


# --- where a body ends, and whether the connection stays -----------------------------------------------


@pytest.mark.parametrize(
    ("status", "fields", "head_request", "framing"),
    [
        (200, [(b"Transfer-Encoding", b"chunked")], False, "chunked"),
        (200, [(b"Content-Length", b"12")], False, 12),
        (200, [(b"Content-Length", b"12"), (b"content-length", b"12")], False, 12),  # repeated, equal
        (200, [(b"Content-Length", b"12"), (b"Content-Length", b"13")], False, "close"),  # conflicting
        (200, [(b"Content-Length", b"-1")], False, "close"),
        (200, [(b"Content-Length", b"12"), (b"Transfer-Encoding", b"chunked")], False, "chunked"),
        (200, [(b"Transfer-Encoding", b"gzip, chunked")], False, "chunked"),
        (200, [(b"Transfer-Encoding", b"identity"), (b"Transfer-Encoding", b"Chunked")], False, "chunked"),
        (200, [(b"Transfer-Encoding", b"chunked, gzip")], False, "close"),  # chunked must come last
        (200, [], False, "close"),
        (204, [(b"Content-Length", b"12")], False, 0),
        (304, [(b"Transfer-Encoding", b"chunked")], False, 0),
        (200, [(b"Content-Length", b"12")], True, 0),  # the answer to a HEAD request
    ],
)
def test_response_framing(status, fields, head_request, framing):
    assert response_framing(status, fields, head_request=head_request) == framing


@pytest.mark.parametrize(
    ("fields", "framing"),
    [
        ([], 0),
        ([(b"Content-Length", b"0")], 0),
        ([(b"content-length", b"42")], 42),
        ([(b"Content-Length", b"42"), (b"Content-Length", b"42")], 42),
        ([(b"Transfer-Encoding", b"chunked")], "chunked"),
        ([(b"Transfer-Encoding", b"gzip, chunked")], "chunked"),
    ],
)
def test_request_framing(fields, framing):
    assert request_framing(fields) == framing


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ([(b"Content-Length", b"abc")], "bad Content-Length b'abc'"),
        ([(b"Content-Length", b"-5")], "bad Content-Length b'-5'"),
        ([(b"Content-Length", b"+5")], "bad Content-Length b'+5'"),
        ([(b"Content-Length", b"1"), (b"Content-Length", b"2")], "bad Content-Length b'1, 2'"),
        ([(b"Transfer-Encoding", b"gzip")], "bad Transfer-Encoding b'gzip': a request body must end chunked"),
    ],
)
def test_request_framing_refuses(fields, error):
    with pytest.raises(ValueError) as info:
        request_framing(fields)
    assert str(info.value) == error


@pytest.mark.parametrize(
    ("version", "fields", "keep"),
    [
        (b"HTTP/1.1", [], True),
        (b"HTTP/1.1", [(b"Connection", b"keep-alive")], True),
        (b"HTTP/1.1", [(b"Connection", b"close")], False),
        (b"HTTP/1.1", [(b"connection", b"Upgrade, Close")], False),
        (b"HTTP/1.1", [(b"Connection", b"closed")], True),  # a token, not a substring
        (b"HTTP/1.1", [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")], False),
        (b"HTTP/1.0", [], False),
        (b"HTTP/1.0", [(b"Connection", b"keep-alive")], False),
    ],
)
def test_keeps_alive(version, fields, keep):
    assert keeps_alive(version, fields) is keep


@pytest.mark.parametrize(
    ("arriving", "head", "left"),
    [
        (b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", b"HTTP/1.1 200 OK\r\nA: b", b"body"),
        (b"HTTP/1.1 200 OK\r\nA: b\r\n\r", None, b"HTTP/1.1 200 OK\r\nA: b\r\n\r"),
        (b"\r\n\r\n", b"", b""),
    ],
    ids=["whole", "not-yet", "empty"],
)
def test_take_head_cuts_a_whole_head_off_the_front(arriving, head, left):
    buffer = bytearray(arriving)
    assert take_head(buffer) == head
    assert buffer == left


def test_take_head_refuses_a_head_past_the_limit():
    assert take_head(bytearray(b"x" * MAX_HEAD_BYTES)) is None  # at the limit: still waiting
    with pytest.raises(HeadTooLong, match="head longer than 65536 bytes"):
        take_head(bytearray(b"x" * (MAX_HEAD_BYTES + 1)))
