"""The upstream SSE decoder (streamchat/providers/upstream_sse.py): the spec's examples, every cut.

The same shared vectors as the encoder and the page's parser, the WHATWG spec's own examples, and
one tricky stream cut at every byte offset, because a network may cut a stream anywhere.
"""

import json
import random

import pytest
from helpers import SSE_VECTORS

from streamchat.providers.upstream_sse import MAX_EVENT_BYTES, MAX_LINE_BYTES, UpstreamSSEDecoder

# Every kind of line end, a BOM, a comment, an id and a retry to skip, multi-line data, UTF-8 of
# 2, 3 and 4 bytes, U+2028 (not a line break), and a last block with no blank line (dropped).
TRICKY = (
    "\ufeff: hello\r\n"
    'event: first\rdata: {"a": "é"}\r\n\r\n'
    "id: 7\nretry: 10\ndata: 你好\ndata\ndata: 🚀\u2028x\n\n"
    "data: [DONE]\r\r"
    "data: never dispatched"
).encode()
TRICKY_EVENTS = [
    ("first", '{"a": "é"}'.encode()),
    ("message", "你好\n\n🚀\u2028x".encode()),
    ("message", b"[DONE]"),
]


def decode(pieces: list[bytes]) -> list[tuple[str, bytes]]:
    """Feed every piece to one decoder; return all the events."""
    decoder = UpstreamSSEDecoder()
    return [event for piece in pieces for event in decoder.feed(piece)]


@pytest.mark.parametrize("vector", SSE_VECTORS, ids=[v["name"] for v in SSE_VECTORS])
def test_upstream_sse_reads_shared_vector(vector):
    [(event, data)] = decode([vector["wire"].encode()])
    assert (event, json.loads(data)) == (vector["event"], vector["data"])


def test_upstream_sse_reads_all_vectors_one_byte_at_a_time():
    wire = "".join(v["wire"] for v in SSE_VECTORS).encode()
    events = decode([wire[i : i + 1] for i in range(len(wire))])
    assert [(e, json.loads(d)) for e, d in events] == [(v["event"], v["data"]) for v in SSE_VECTORS]


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        (b"data: YHOO\ndata: +2\ndata: 10\n\n", [("message", b"YHOO\n+2\n10")]),
        (
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
            [("message", b"first event"), ("message", b"second event"), ("message", b" third event")],
        ),
        (b"data\n\ndata\ndata\n\ndata:", [("message", b""), ("message", b"\n")]),
        (b"data:test\n\ndata: test\n\n", [("message", b"test"), ("message", b"test")]),
    ],
    ids=[
        "three data lines",
        "comment, ids, one space removed",
        "empty data and dropped block",
        "colon space",
    ],
)
def test_upstream_sse_spec_examples(stream, events):
    assert decode([stream]) == events


def test_upstream_sse_event_name_applies_to_one_event_only():
    assert decode([b"event: error\ndata: 1\n\ndata: 2\n\n"]) == [("error", b"1"), ("message", b"2")]


def test_upstream_sse_block_without_data_is_not_dispatched():
    assert decode([b"event: x\nid: 3\n\n: ping\n\n"]) == []


def test_upstream_sse_empty_piece_keeps_a_crlf_split_around_it():
    assert decode([b"data: a\r", b"", b"\ndata: b\n\n"]) == [("message", b"a\nb")]


def test_upstream_sse_bom_only_at_the_start():
    assert decode([b"\xef\xbb", b"\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"]) == [("message", b"a")]


def test_upstream_sse_tricky_stream_whole():
    assert decode([TRICKY]) == TRICKY_EVENTS


@pytest.mark.parametrize("cut", range(len(TRICKY) + 1))
def test_upstream_sse_tricky_stream_cut_anywhere(cut):
    assert decode([TRICKY[:cut], TRICKY[cut:]]) == TRICKY_EVENTS


def test_upstream_sse_tricky_stream_random_cuts():
    rng = random.Random(5)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(TRICKY)), rng.randint(2, 12)))
        pieces = [TRICKY[a:b] for a, b in zip([0, *cuts], [*cuts, len(TRICKY)], strict=True)]
        assert decode(pieces) == TRICKY_EVENTS, cuts


def test_upstream_sse_endless_line_is_refused():
    decoder = UpstreamSSEDecoder()
    decoder.feed(b"data: " + b"x" * (MAX_LINE_BYTES - 6))
    with pytest.raises(ValueError, match="longer than"):
        decoder.feed(b"x")


def test_upstream_sse_endless_event_is_refused():
    # data lines, each short, and never the blank line that ends the event
    decoder = UpstreamSSEDecoder()
    line = b"data: " + b"x" * 1023 + b"\n"  # 1,024 bytes of data each, with its LF
    decoder.feed(line * (MAX_EVENT_BYTES // 1024))
    with pytest.raises(ValueError, match="event's data is longer than"):
        decoder.feed(line)


def test_upstream_sse_event_bound_starts_again_with_each_event():
    decoder = UpstreamSSEDecoder()
    block = b"data: " + b"x" * (MAX_LINE_BYTES - 1) + b"\n\n"
    for _ in range(2 * MAX_EVENT_BYTES // MAX_LINE_BYTES):
        [(name, data)] = decoder.feed(block)
        assert (name, len(data)) == ("message", MAX_LINE_BYTES - 1)
