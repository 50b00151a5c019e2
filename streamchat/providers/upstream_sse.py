"""Reading the upstream's Server-Sent Events: network bytes in, complete events out, incrementally.

Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Where it sits: the openai provider (openai_compatible.py) feeds it each piece of the streaming
response body as it arrives, and gets back the events that piece completed. It is the Python twin
of the page's parser (static/js/sse-parser.js) and is tested against the same byte vectors.

Why not the SDK's decoder: the SDK turns every event into a typed object, which cost about a third
of the relay's CPU per token under load (the benchmark's profile, docs/performance.md). This decoder
does only what the relay needs.

Deliberate choices:

- Bytes all the way. Lines are split on bytes and ``data`` stays bytes, which ``json.loads`` reads
  as UTF-8 directly. A line is only split at CR or LF, which never occur inside a multi-byte UTF-8
  sequence, so a character cut between two network reads is simply carried over with the tail.
- The unfinished last line is carried to the next ``feed``; a CR at the very end of a piece may be
  the first half of a CRLF, so an LF at the start of the next piece is then skipped.
- Only ``event`` and ``data`` matter to a relay: ``id`` and ``retry`` (which serve reconnection) and
  comments are skipped. An event is only dispatched if it had a ``data`` line, as the spec says.
- A line longer than MAX_LINE_BYTES, or an event whose data lines add up to more than
  MAX_EVENT_BYTES, raises ValueError: an upstream that never ends a line, or sends ``data:`` lines
  and never the blank line that ends the event, must not grow this process's memory without bound.
"""

from __future__ import annotations

MAX_LINE_BYTES = 1 << 20
MAX_EVENT_BYTES = 1 << 22  # an OpenAI chunk is a few hundred bytes; this is only a bound
_BOM = b"\xef\xbb\xbf"


class UpstreamSSEDecoder:
    """Turn pieces of an ``text/event-stream`` body into ``(event, data)`` pairs."""

    def __init__(self) -> None:
        self._tail = b""
        self._skip_lf = False  # the last piece ended with CR: an LF first in the next one is its pair
        self._first = True  # a UTF-8 BOM may start the stream, and only the stream
        self._event = ""
        self._data: list[bytes] = []
        self._data_bytes = 0  # in self._data, with one for each line's LF

    def feed(self, piece: bytes) -> list[tuple[str, bytes]]:
        """Return the events that ``piece`` completes, as (event name, data bytes)."""
        if not piece:
            return []  # and a CR that ended the last piece may still pair with the next one's LF
        if self._skip_lf and piece[:1] == b"\n":
            piece = piece[1:]
        self._skip_lf = False
        buffer = self._tail + piece if self._tail else piece
        if self._first:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._tail = buffer  # too short to tell yet
                return []
            self._first = False
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
        if b"\r" in buffer:
            # CRLF and a lone CR are line ends too. A CR that ends the piece ends its line now.
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_LINE_BYTES:
            raise ValueError(f"an event-stream line is longer than {MAX_LINE_BYTES} bytes")
        events = []
        for line in lines:
            if not line:  # a blank line dispatches the event
                if self._data:
                    events.append((self._event or "message", b"\n".join(self._data)))
                self._event, self._data, self._data_bytes = "", [], 0
            elif line.startswith(b"data:"):  # the common case first
                self._add_data(line[6:] if line[5:6] == b" " else line[5:])
            elif line[:1] != b":":  # a colon first is a comment
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":  # "data" alone, with no colon, is an empty data line
                    self._add_data(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
        return events

    def _add_data(self, value: bytes) -> None:
        self._data_bytes += len(value) + 1
        if self._data_bytes > MAX_EVENT_BYTES:
            raise ValueError(f"an event-stream event's data is longer than {MAX_EVENT_BYTES} bytes")
        self._data.append(value)
