"""The openai provider's pure parts: mapping numbers and error statuses, reading an answer from pieces.

The context-window errors of each server family are the fake upstream's recorded bodies
(fakeupstream/errors.py), so the mapping and the fake cannot drift apart; the same bodies go through
the real SDK over a socket in tests/test_openai_provider.py.
"""

import json

import httpx2
import pytest

from fakeupstream.errors import CONTEXT_DIALECTS, CONTEXT_ERRORS
from streamchat.providers.base import Delta, Finish, ProviderFailure
from streamchat.providers.openai_compatible import _retry_after, _usage, fail_code_for_status, read_answer

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
    """Run read_answer over network pieces; return what it yielded and how it failed, if it did."""
    items: list[Delta | Finish] = []
    try:
        for item in read_answer(iter(pieces)):
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


# --- HTTP error statuses to fail codes -------------------------------------------------------------------


def _as_sdk_body(raw: bytes) -> object:
    """Return an error body as the SDK hands it over in ``err.body``: the object inside ``{"error": ...}``."""
    body = json.loads(raw)
    return body.get("error", body)


@pytest.mark.parametrize("dialect", CONTEXT_DIALECTS)
def test_fail_code_context_error_of_each_server_family(dialect):
    assert fail_code_for_status(400, _as_sdk_body(CONTEXT_ERRORS[dialect])) == "context_too_long"


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        # Context errors in other shapes than the fake upstream's recorded ones.
        (
            400,
            {
                "message": "This model's maximum context length is 8192 tokens, however you requested 9850 "
                "tokens (9000 in your prompt; 850 for the completion). Please reduce your prompt; or "
                "completion length.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
            "context_too_long",
        ),  # OpenAI's older wording, no code
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens. However, you requested 9000 "
                "tokens (8000 in the messages, 1000 in the completion). Please reduce the length of the "
                "messages or completion.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            "context_too_long",
        ),  # older vLLM: the fields at the top level, not inside "error"
        (
            400,
            {
                "message": "'max_tokens' or 'max_completion_tokens' is too large: 1024. This model's maximum "
                "context length is 4096 tokens and your request has 3500 input tokens (1024 > 4096 - 3500). "
                "None",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            "context_too_long",
        ),  # vLLM: the conversation leaves no room for the answer
        (
            400,
            {
                "code": 400,
                "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 9000,
                "n_ctx": 4096,
            },
            "context_too_long",
        ),  # older llama.cpp wording, same type
        (
            400,
            {
                "message": "litellm.ContextWindowExceededError: litellm.BadRequestError: "
                "ContextWindowExceededError: OpenAIException - This model's maximum context length is "
                "262144 tokens. However, your request has 372027 input tokens.",
                "type": None,
                "param": None,
                "code": "400",
            },
            "context_too_long",
        ),  # LiteLLM in front of vLLM
        (
            500,
            {
                "message": "the input length exceeds the context length",
                "type": "api_error",
                "param": None,
                "code": None,
            },
            "context_too_long",
        ),  # Ollama versions that sent every error of its OpenAI endpoint as a 500
        (413, {"message": "the input length exceeds the context length"}, "context_too_long"),
        (400, "the input length exceeds the context length", "context_too_long"),  # a body that is not JSON
        # Look-alikes: a 400 about something else stays bad_request, whatever words it shares.
        (
            400,
            {
                "message": "Invalid 'messages[0].content': string too long. Expected a string with maximum "
                "length 10485760, but got a string with length 10485761 instead.",
                "type": "invalid_request_error",
                "param": "messages[0].content",
                "code": "string_above_max_length",
            },
            "bad_request",
        ),
        (
            400,
            {"message": "max_tokens must be at least 1, got 0. None", "type": "BadRequestError", "code": 400},
            "bad_request",
        ),  # vLLM
        (
            400,
            {
                "code": 400,
                "message": "Failed to parse messages: missing content",
                "type": "invalid_request_error",
            },
            "bad_request",
        ),  # llama.cpp
        (
            400,
            {
                "message": "litellm.BadRequestError: OpenAIException - Unrecognized request argument "
                "supplied: context_window",
                "type": None,
                "param": None,
                "code": "400",
            },
            "bad_request",
        ),  # LiteLLM, a plain BadRequestError that mentions a context window
        (
            400,
            {
                "message": "invalid message format",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
            "bad_request",
        ),  # Ollama
        (
            400,
            {
                "message": "num_ctx: the context length must be a positive number",
                "type": "invalid_request_error",
            },
            "bad_request",
        ),  # says "context length", but not that the conversation is too long
        (
            404,
            {"message": "This model's maximum context length is 4096 tokens.", "code": "model_not_found"},
            "bad_request",
        ),
        (422, {"message": "the input length exceeds the context length"}, "bad_request"),
        (
            500,
            {"message": "This model's maximum context length is 4096 tokens.", "type": "server_error"},
            "upstream_unavailable",
        ),
        (
            429,
            {
                "message": "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, "
                "Requested 50000.",
                "type": "tokens",
                "param": None,
                "code": "rate_limit_exceeded",
            },
            "rate_limited",
        ),
        # The other statuses, as before.
        (401, {"message": "Incorrect API key provided", "code": "invalid_api_key"}, "upstream_auth"),
        (403, None, "upstream_auth"),
        (
            429,
            {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            },
            "quota_exhausted",
        ),
        (409, {}, "bad_request"),
        (503, "Service Unavailable", "upstream_unavailable"),
        (418, None, "upstream_error"),
    ],
)
def test_fail_code_for_status_table(status, body, code):
    assert fail_code_for_status(status, body) == code
