"""The openai provider's pure parts: mapping numbers safely, and reading an answer from body pieces."""

import json

import httpx2
import pytest

from streamchat.providers.base import Delta, Finish, ProviderFailure
from streamchat.providers.openai_compatible import _read_answer, _retry_after, _usage

DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_only_finite_seconds(headers, seconds):
    assert _retry_after(httpx2.Response(429, headers=headers)) == seconds


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, "extra": 1},
            {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        ),
        ({"prompt_tokens": 3, "completion_tokens": float("inf"), "total_tokens": 8}, None),
        ({"prompt_tokens": 3, "completion_tokens": 5}, None),
        ({"prompt_tokens": True, "completion_tokens": 5, "total_tokens": 8}, None),
        ([3, 5, 8], None),
    ],
)
def test_usage_keeps_only_integer_counts(usage, expected):
    assert _usage(usage) == expected


def _chunk(content: str | None = None, finish_reason: str | None = None) -> bytes:
    """One chat.completion.chunk event, as an upstream sends it."""
    choice = {
        "index": 0,
        "delta": {} if content is None else {"content": content},
        "finish_reason": finish_reason,
    }
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": [choice]}).encode() + b"\n\n"


def _answer(*pieces: bytes) -> tuple[list[Delta | Finish], ProviderFailure | None]:
    """Run _read_answer over network pieces; return what it yielded and how it failed, if it did."""
    items: list[Delta | Finish] = []
    try:
        for item in _read_answer(iter(pieces)):
            items.append(item)
    except ProviderFailure as failure:
        return items, failure
    return items, None


def test_read_answer_one_delta_per_network_read():
    items, failure = _answer(
        _chunk("Hel") + _chunk("lo"), _chunk(" you"), _chunk(finish_reason="stop") + DONE
    )
    assert (items, failure) == ([Delta("Hello", 2), Delta(" you", 1), Finish("stop", None)], None)


def test_read_answer_reports_a_read_without_text_as_an_empty_delta_for_the_clocks():
    # A reasoning model (vLLM, Ollama) streams its thinking with no content, maybe for minutes: the
    # producer's clocks must hear that the upstream is alive. The last read ends the answer instead.
    thinking = b'data: {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]}\n\n'
    items, failure = _answer(_chunk(""), thinking, b": a comment\n\n", _chunk("Hi"), _chunk() + DONE)
    assert (items, failure) == ([Delta("", 0)] * 3 + [Delta("Hi", 1), Finish("stop", None)], None)


def test_read_answer_delivers_the_text_before_a_failure_in_the_same_read():
    error = b'data: {"error": {"message": "overloaded"}}\n\n'
    items, failure = _answer(_chunk("Hello") + _chunk(" world") + error)
    assert items == [Delta("Hello world", 2)]
    assert failure is not None and failure.code == "upstream_error"


@pytest.mark.parametrize(
    ("pieces", "outcome"),
    [
        ((_chunk("a"), DONE), Finish("stop", None)),  # [DONE] alone: finished, the reason unsaid
        ((_chunk("a", finish_reason="length"),), Finish("length", None)),  # no [DONE]: still finished
        ((_chunk("a"),), "truncated"),  # neither: cut short
        ((_chunk("a"), b"data: {not json}\n\n"), "malformed_chunk"),
        ((_chunk("a"), b'data: {"choices": "no"}\n\n'), "malformed_chunk"),
        ((_chunk("a"), b"data: \xff\xfe\n\n"), "malformed_chunk"),
    ],
    ids=["done only", "finish reason only", "neither", "bad json", "choices not a list", "not utf-8"],
)
def test_read_answer_how_an_answer_ends(pieces, outcome):
    items, failure = _answer(*pieces)
    assert items[0] == Delta("a", 1)
    if isinstance(outcome, Finish):
        assert (items[1:], failure) == ([outcome], None)
    else:
        assert failure is not None and failure.code == outcome
