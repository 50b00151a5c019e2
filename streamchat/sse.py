"""The Server-Sent Events wire format, as pure functions: values in, exact bytes out.

Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

This module knows nothing about Flask, runs or models: it only turns one event into the bytes that go
on the wire, so it can be tested with a table of input and exact output (tests/test_sse.py, and the
same vectors feed the page's JavaScript parser tests through tests/vectors/sse_vectors.json).

Deliberate choices:

- Every event's payload is one line of JSON. JSON escapes every character that could break an SSE
  frame (LF, CR, NUL), so model text with newlines, ``data:`` look-alikes or a trailing ``\\r``
  arrives intact, and the reader never has to join multi-line ``data`` fields.
- ``ensure_ascii=True``: the wire is pure ASCII. It also escapes U+2028/U+2029 (which some line
  splitters wrongly treat as line breaks) and lone surrogates (which cannot be encoded as UTF-8 at
  all, so ``ensure_ascii=False`` would raise mid-stream). The price is a few more bytes for
  non-Latin text, paid before gzip-free streaming; correctness wins.
- LF line endings only, no BOM, fields in a fixed order (``id``, ``event``, ``data``), and each event
  is returned as one ``bytes`` object so that it can go out in one write.
- Event names and comments are checked: a newline in either would let data forge a frame.

Try it::

    python -c "from streamchat.sse import encode_event; print(encode_event('token', {'text': 'hi'}, 2))"
"""

from __future__ import annotations

import json

HEARTBEAT = b": ping\n\n"


def encode_event(event: str, data: object, event_id: int | None) -> bytes:
    """Return one complete SSE frame: ``id``, ``event`` and a one-line JSON ``data``.

    ``event_id=None`` leaves the ``id`` field out, so the client's last event id stays where it
    was: for an event that this server says but the run's log does not hold (a reader's own
    ``fail`` when the run store is lost), which a resume must not skip past.
    """
    _check_field("event", event)
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    if event_id is None:
        return f"event: {event}\ndata: {payload}\n\n".encode("ascii")
    if not isinstance(event_id, int) or event_id < 0:
        raise ValueError(f"event id must be a non-negative int, got {event_id!r}")
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n".encode("ascii")


def encode_token(text: str, tokens: int, event_id: int) -> bytes:
    """Return the ``token`` frame for ``text``: the same bytes as ``encode_event``, made faster.

    Why a second function: it runs for every token of every stream, the relay's hot path
    (docs/performance.md).
    The event name and the keys are fixed, so only the text needs escaping, and ``json.dumps`` of a
    plain string goes straight to the JSON module's C escaper (with ``ensure_ascii``, its default).
    tests/test_sse.py checks that both functions give the same bytes.
    """
    return b'id: %d\nevent: token\ndata: {"text":%s,"tokens":%d}\n\n' % (
        event_id,
        json.dumps(text).encode("ascii"),
        tokens,
    )


def frame_data(frame: bytes) -> dict:
    """Return the data of a frame that ``encode_event`` made (its one ``data:`` line, as JSON).

    For the rare reader of its own frames (a run's terminal event, read back from Redis); never a
    parser for frames from elsewhere.
    """
    _, found, rest = frame.partition(b"\ndata: ")
    if not found:
        raise ValueError("not a frame with data")
    return json.loads(rest[: rest.index(b"\n")])


def encode_comment(text: str) -> bytes:
    """Return an SSE comment (ignored by every reader; used for heartbeats)."""
    _check_field("comment", text)
    return f": {text}\n\n".encode() if text else b":\n\n"


def encode_retry(milliseconds: int) -> bytes:
    """Return the ``retry:`` hint that tells ``EventSource`` how long to wait before reconnecting."""
    if not isinstance(milliseconds, int) or milliseconds < 0:
        raise ValueError(f"retry must be a non-negative int of milliseconds, got {milliseconds!r}")
    return f"retry: {milliseconds}\n\n".encode("ascii")


def _check_field(name: str, value: str) -> None:
    """Refuse values that would end the SSE line early and let the rest forge new fields."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {value!r}")
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"{name} must not contain a line break or NUL: {value!r}")
    if name == "event" and (not value or ":" in value):
        raise ValueError(f"event name must be non-empty and contain no colon: {value!r}")
