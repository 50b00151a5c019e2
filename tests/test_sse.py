"""The SSE encoder: exact bytes for each tricky input (the same vectors feed the JS parser tests)."""

import pytest
from helpers import SSE_VECTORS

from streamchat.sse import HEARTBEAT, encode_comment, encode_event, encode_retry, encode_token, frame_data


@pytest.mark.parametrize("vector", SSE_VECTORS, ids=[v["name"] for v in SSE_VECTORS])
def test_encode_event_matches_shared_vector(vector):
    assert encode_event(vector["event"], vector["data"], vector["id"]) == vector["wire"].encode("ascii")


@pytest.mark.parametrize(
    ("event", "data", "event_id", "wire"),
    [
        ("token", {"text": "\ud800"}, 3, b'id: 3\nevent: token\ndata: {"text":"\\ud800"}\n\n'),
        ("token", {"text": "\r"}, 4, b'id: 4\nevent: token\ndata: {"text":"\\r"}\n\n'),
        (
            "done",
            {"finish_reason": "stopped"},
            9,
            b'id: 9\nevent: done\ndata: {"finish_reason":"stopped"}\n\n',
        ),
        ("start", [], 0, b"id: 0\nevent: start\ndata: []\n\n"),
    ],
    ids=["lone surrogate", "bare CR", "stopped", "id zero"],
)
def test_encode_event_exact_bytes(event, data, event_id, wire):
    assert encode_event(event, data, event_id) == wire


def test_encode_event_is_one_line_of_ascii_data():
    frame = encode_event("token", {"text": "a\nb\u2028c\x00d"}, 1)
    assert frame.isascii()
    assert frame.count(b"\n") == 4  # id, event, data, blank line
    assert b"\r" not in frame


@pytest.mark.parametrize(
    ("event", "event_id", "error"),
    [
        ("to\nken", 1, ValueError),
        ("to\rken", 1, ValueError),
        ("to\0ken", 1, ValueError),
        ("a:b", 1, ValueError),
        ("", 1, ValueError),
        ("token", -1, ValueError),
        ("token", "1", ValueError),
        (b"token", 1, TypeError),
    ],
)
def test_encode_event_refuses_values_that_forge_frames(event, event_id, error):
    with pytest.raises(error):
        encode_event(event, {}, event_id)


def test_encode_event_refuses_nan():
    with pytest.raises(ValueError):
        encode_event("token", {"x": float("nan")}, 1)


@pytest.mark.parametrize(
    ("text", "wire"),
    [("ping", b": ping\n\n"), ("", b":\n\n"), ("h\u00e9", ": h\u00e9\n\n".encode())],
)
def test_encode_comment_exact_bytes(text, wire):
    assert encode_comment(text) == wire


def test_encode_comment_refuses_line_breaks():
    with pytest.raises(ValueError):
        encode_comment("a\nevent: done")


def test_heartbeat_is_the_ping_comment():
    assert HEARTBEAT == encode_comment("ping") == b": ping\n\n"


@pytest.mark.parametrize(("ms", "wire"), [(3000, b"retry: 3000\n\n"), (0, b"retry: 0\n\n")])
def test_encode_retry_exact_bytes(ms, wire):
    assert encode_retry(ms) == wire


@pytest.mark.parametrize("ms", [-1, 1.5, "3000"])
def test_encode_retry_refuses_non_integers(ms):
    with pytest.raises(ValueError):
        encode_retry(ms)


@pytest.mark.parametrize(
    "text",
    [
        "Hello",
        "",
        "a\nb\r\nc",
        '"quoted" \\ back',
        "é 你好 🚀",
        "\u2028\u2029",
        "\ud800",
        "\x00\x1f\x7f",
        "data: x\n\n",
    ],
)
@pytest.mark.parametrize(("tokens", "event_id"), [(1, 2), (7, 123456789)])
def test_encode_token_matches_encode_event(text, tokens, event_id):
    expected = encode_event("token", {"text": text, "tokens": tokens}, event_id)
    assert encode_token(text, tokens, event_id) == expected


@pytest.mark.parametrize(
    ("name", "data", "event_id"),
    [("done", {"finish_reason": "stopped"}, 9), ("fail", {"code": "worker_lost", "text": "a\nb"}, None)],
)
def test_frame_data_reads_back_what_encode_event_wrote(name, data, event_id):
    assert frame_data(encode_event(name, data, event_id)) == data


def test_frame_data_refuses_a_frame_without_data():
    with pytest.raises(ValueError):
        frame_data(HEARTBEAT)
