"""HTTP/1.1 framing as pure functions over bytes: chunked coding, message heads, where a body ends.

Spec: RFC 9112, HTTP/1.1 (https://www.rfc-editor.org/rfc/rfc9112): section 2 (message format), 3 and 4
(request and status lines), 5 (field lines), 6.3 (message body length), 7.1 (chunked transfer coding)
and 9.3 (persistence).

Where it sits: three parts of this project speak HTTP/1.1 by hand, and all three take their framing
from here, so that each rule has one home and one table of tests (tests/test_http1.py):

- the lean transport (streamchat/providers/lean_transport.py), which reads the model server's
  streaming answer for the openai SDK: a response head, then a chunked body, read by the piece;
- the fake upstream (fakeupstream/), which plays the model server: it reads request heads and
  writes each SSE frame as one chunk;
- the benchmark's load generator (bench/loadgen.py), which reads thousands of streams at once.

Nothing here touches a socket: bytes in, values or bytes out. The callers own their sockets, their
buffers and their own kind of error.

Try it::

    python -c "import streamchat.http1 as h; print(h.ChunkedDecoder().decode(bytearray(b'2\\r\\nhi\\r\\n')))"

Deliberate choices:

- The chunked decoder consumes from the caller's ``bytearray`` and leaves whatever follows the body in
  it (on a kept connection, the next response). It runs once per network read for every open stream,
  so it finds line ends with ``bytearray.find`` and takes data by slices, never byte by byte.
- A message that breaks a rule raises ``ValueError`` that shows the offending bytes with ``!r``; each
  caller turns it into its own failure (httpx2's RemoteProtocolError, a 400 answer, a failed stream).
- Only what the three callers meet: no obsolete line folding, trailers read and dropped, chunk
  extensions ignored. HTTP/1.0 never keeps its connection here, even when it asks to.
"""

from __future__ import annotations

from typing import NamedTuple

# A head (start line and fields) longer than this is refused; it also bounds a chunk-size line.
MAX_HEAD_BYTES = 64 * 1024
HEAD_END = b"\r\n\r\n"  # the empty line after the field lines (RFC 9112, 2.1)
LAST_CHUNK = b"0\r\n\r\n"  # the zero-size chunk, with no trailers, that ends a chunked body (7.1)

_HEX_DIGITS = b"0123456789abcdefABCDEF"
_MAX_SIZE_DIGITS = 15  # a chunk size must fit in 60 bits
_NO_BODY_STATUSES = (204, 304)

Fields = list[tuple[bytes, bytes]]  # (name as sent, value without surrounding whitespace), in order


class ResponseHead(NamedTuple):
    """A response's status line and field lines."""

    version: bytes
    status: int
    reason: bytes
    fields: Fields


class RequestHead(NamedTuple):
    """A request's request line and field lines."""

    method: bytes
    target: bytes
    version: bytes
    fields: Fields


# --- chunked transfer coding (7.1) -------------------------------------------------------------------


def encode_chunk(data: bytes) -> bytes:
    """Return ``data`` as one chunk: its size in hex, CRLF, the data, CRLF (never empty: that ends)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def parse_chunk_size(line: bytes | bytearray) -> int:
    """Read a chunk-size line: hex digits, then maybe extensions after a semicolon (ignored)."""
    size = line.split(b";", 1)[0].strip() if b";" in line else line
    # Hex digits only: int(..., 16) alone would also take a sign, spaces, "0x" and underscores.
    if not 0 < len(size) <= _MAX_SIZE_DIGITS or size.translate(None, _HEX_DIGITS):
        raise ValueError(f"bad chunk size line {bytes(line[:40])!r}")
    return int(size, 16)


class ChunkedDecoder:
    """Decode a chunked body from a buffer, as its bytes arrive, in pieces cut anywhere."""

    __slots__ = ("_crlf_due", "_ended", "_in_trailers", "_left")

    def __init__(self) -> None:
        self._left = 0  # data bytes left in the current chunk
        self._crlf_due = False  # the current chunk's data is read; its CRLF is not yet
        self._in_trailers = False
        self._ended = False

    def decode(self, buffer: bytearray) -> tuple[bytes, bool]:
        """Consume what ``buffer`` holds of the body; return the data it carried and whether it ended."""
        pieces = []
        pos = 0
        end = len(buffer)
        while pos < end and not self._ended:
            if self._left:  # inside a chunk's data: take what is here
                take = min(self._left, end - pos)
                pieces.append(buffer[pos : pos + take])
                pos += take
                self._left -= take
                self._crlf_due = not self._left
                continue
            eol = buffer.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > MAX_HEAD_BYTES:
                    raise ValueError("chunk size line too long")
                break
            if self._crlf_due:  # the CRLF that closes a chunk's data
                if eol != pos:
                    raise ValueError("chunk data longer than its size")
                self._crlf_due = False
            elif self._in_trailers:
                self._ended = eol == pos  # the blank line after the trailers ends the body
            else:
                size = parse_chunk_size(buffer[pos:eol])
                pos = eol + 2
                stop = pos + size
                if size and buffer[stop : stop + 2] == b"\r\n":
                    # The common case, in one step: the whole chunk is here, the CRLF after it too.
                    pieces.append(buffer[pos:stop])
                    pos = stop + 2
                else:
                    self._left = size
                    self._in_trailers = size == 0
                continue
            pos = eol + 2
        del buffer[:pos]
        return b"".join(pieces), self._ended


# --- heads (2.1, 3, 4, 5) ----------------------------------------------------------------------------


class HeadTooLong(ValueError):
    """A head (start line and fields) longer than MAX_HEAD_BYTES."""


def take_head(buffer: bytearray) -> bytes | None:
    """Cut a whole head off the front of ``buffer`` and return it (without its empty line), or
    None if it has not all arrived; raise HeadTooLong once the buffer is past MAX_HEAD_BYTES without one.
    """
    end = buffer.find(HEAD_END)
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise HeadTooLong(f"head longer than {MAX_HEAD_BYTES} bytes")
        return None
    raw = bytes(buffer[:end])
    del buffer[: end + len(HEAD_END)]
    return raw


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse a response head (everything before its empty line): status line, then field lines."""
    status_line, *lines = head.split(b"\r\n")
    try:
        version, code, *rest = status_line.split(b" ", 2)
        status = int(code)
    except ValueError:
        raise ValueError(f"bad status line {status_line[:100]!r}") from None
    if not version.startswith(b"HTTP/1.") or not 100 <= status <= 599:
        raise ValueError(f"bad status line {status_line[:100]!r}")
    return ResponseHead(version, status, rest[0] if rest else b"", _parse_fields(lines))


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (everything before its empty line): request line, then field lines."""
    request_line, *lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not all(parts) or not parts[2].startswith(b"HTTP/1."):
        raise ValueError(f"bad request line {request_line[:100]!r}")
    method, target, version = parts
    return RequestHead(method, target, version, _parse_fields(lines))


def _parse_fields(lines: list[bytes]) -> Fields:
    """Parse field lines; no whitespace may come between a name and its colon (5.1)."""
    fields = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"bad header line {line[:100]!r}")
        fields.append((name, value.strip()))
    return fields


def field_values(fields: Fields, name: bytes) -> list[bytes]:
    """Return the values of every field named ``name`` (lower case), in order."""
    return [value for field, value in fields if field.lower() == name]


# --- where a body ends, and whether the connection stays (6.3, 9.3) ------------------------------------


def response_framing(status: int, fields: Fields, *, head_request: bool = False) -> int | str:
    """Return how a response body ends: "chunked", "close", or its length in bytes (6.3)."""
    if head_request or status in _NO_BODY_STATUSES or 100 <= status < 200:
        return 0
    codings = b",".join(field_values(fields, b"transfer-encoding"))
    if codings:  # every field line together; the last coding decides, and Content-Length is ignored
        return "chunked" if codings.lower().rsplit(b",", 1)[-1].strip() == b"chunked" else "close"
    lengths = set(field_values(fields, b"content-length"))
    if len(lengths) == 1:
        [length] = lengths
        if length.isdigit():
            return int(length)
    return "close"  # no length, or conflicting ones: read to the end and never reuse


def request_framing(fields: Fields) -> int | str:
    """Return how a request body ends: "chunked" or its length in bytes; ValueError if unframeable (6.3)."""
    codings = b",".join(field_values(fields, b"transfer-encoding"))
    if codings:
        if codings.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
            raise ValueError(f"bad Transfer-Encoding {codings[:100]!r}: a request body must end chunked")
        return "chunked"
    lengths = set(field_values(fields, b"content-length"))
    if not lengths:
        return 0
    if len(lengths) > 1 or not next(iter(lengths)).isdigit():
        raise ValueError(f"bad Content-Length {b', '.join(sorted(lengths))[:100]!r}")
    return int(next(iter(lengths)))


def keeps_alive(version: bytes, fields: Fields) -> bool:
    """Tell whether the connection may carry another message after this one (9.3, 6.3)."""
    if version != b"HTTP/1.1":
        return False  # HTTP/1.0 closes by default, and its keep-alive is not worth the risk here
    names = {name.lower() for name, _ in fields}
    if b"transfer-encoding" in names and b"content-length" in names:
        return False  # both framings: a sign of request smuggling, so never reuse (6.3, point 3)
    tokens = {
        token.strip() for value in field_values(fields, b"connection") for token in value.lower().split(b",")
    }
    return b"close" not in tokens
