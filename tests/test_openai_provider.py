"""Tests for the openai provider (streamchat/providers/openai_compatible.py), over a real socket.

Where it sits: the provider is the last step of a request's journey before the model server. Here it
is driven directly, as a plain generator in the pytest process (no gevent, no Flask), through the real
``openai`` SDK, against the fake upstream (fakeupstream/) on 127.0.0.1. Each test asks the fake for
one behaviour with a ``[fake ...]`` directive and a tag of its own, then checks the exact text
delivered, the exact ``Finish`` or ``ProviderFailure``, and what the fake saw happen to its
connection (``completed``, ``fault``, ``client_closed``).

Run: ``python -m pytest tests/test_openai_provider.py -q``
"""

import gc
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import pytest
from helpers import free_port

from fakeupstream import FakeUpstreamProcess, expected_text
from fakeupstream.errors import CONTEXT_DIALECTS
from streamchat.chat_request import ChatRequest
from streamchat.config import Settings
from streamchat.protocol import FAIL_CODES
from streamchat.providers.base import Delta, Finish, ProviderFailure
from streamchat.providers.openai_compatible import OpenAICompatibleProvider

SYSTEM_PROMPT = "system prompt"  # two words: the fake counts them into prompt_tokens
MODEL = "gpt-4o-mini"
# Text that breaks careless relays: line endings of every kind, 2-, 3- and 4-byte UTF-8, U+2028 (a
# line break only to str.splitlines), a line that looks like an SSE field, and markup.
TRICKY = "line one\nline two\r\nthree\rfour é 你好 🚀 \u2028 after\ndata: x\n\n<script>alert(1)</script>"


def _tag() -> str:
    """Return a tag no other test uses."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(params=["lean", "httpx"])
def transport(request) -> str:
    """Run the test over each transport: ours (the default) and httpx's own."""
    return request.param


@contextmanager
def _provider(transport: str, base_url: str, max_retries: int = 0) -> Iterator[OpenAICompatibleProvider]:
    """Yield a provider for ``base_url`` and close its connection pool afterwards."""
    settings = Settings().with_overrides(
        openai_transport=transport,
        openai_base_url=base_url,
        openai_api_key="fake",
        openai_max_retries=max_retries,
        openai_connect_timeout_seconds=2.0,
    )
    provider = OpenAICompatibleProvider(settings)
    try:
        yield provider
    finally:
        provider.client.close()


def _ask(directive: str, text: str = "hi", max_tokens: int = 1000) -> tuple[ChatRequest, str]:
    """Return a one-message request carrying ``[fake <directive> tag=...]``, and its tag."""
    tag = _tag()
    content = f"{text} [fake {directive} tag={tag}]".strip()
    request = ChatRequest(
        messages=({"role": "user", "content": content},),
        model=MODEL,
        max_tokens=max_tokens,
        temperature=None,
    )
    return request, tag


def _collect(
    provider: OpenAICompatibleProvider, request: ChatRequest
) -> tuple[str, Finish | None, ProviderFailure | None]:
    """Drive the provider to its end; return the text delivered, the Finish and the failure."""
    pieces: list[str] = []
    finish = None
    try:
        for item in provider.stream(request, SYSTEM_PROMPT):
            assert finish is None, f"{item!r} came after the Finish"
            if isinstance(item, Finish):
                finish = item
            else:
                assert isinstance(item, Delta), item
                pieces.append(item.text)
    except ProviderFailure as failure:
        return "".join(pieces), finish, failure
    return "".join(pieces), finish, None


def _next_text(stream: Iterator[Delta | Finish]) -> Delta | Finish:
    """Return the next item with answer text (or the Finish), past the empty "upstream alive" deltas."""
    while not isinstance(item := next(stream), Finish) and not item.text:
        pass
    return item


def _run(transport: str, fake_upstream: FakeUpstreamProcess, directive: str, **ask: object):
    """Send one tagged request to the fake upstream; return (text, finish, failure, tag)."""
    request, tag = _ask(directive, **ask)
    with _provider(transport, fake_upstream.base_url) as provider:
        text, finish, failure = _collect(provider, request)
    return text, finish, failure, tag


def _assert_failure(failure: ProviderFailure | None, code: str, retry_after: float | None = None) -> None:
    """Check a failure's code, retryability, retry_after and that its message is the safe one."""
    assert failure is not None, f"expected a {code!r} failure, got none"
    retryable, message = FAIL_CODES[code]
    assert (failure.code, failure.retryable, failure.retry_after) == (code, retryable, retry_after)
    assert (str(failure), failure.message) == (message, message)


def _usage(completion_tokens: int) -> dict[str, int]:
    """The usage the fake reports for ``_ask``'s one-word prompt (see the happy path)."""
    return {"prompt_tokens": 3, "completion_tokens": completion_tokens, "total_tokens": 3 + completion_tokens}


# --- answers that end well ------------------------------------------------------------------------------


def test_openai_provider_happy_path(transport, fake_upstream):
    text, finish, failure, tag = _run(transport, fake_upstream, "tokens=8")
    assert failure is None
    assert text == expected_text(8)
    # prompt_tokens is the fake's word count of every message sent: 2 for the system prompt + 1 ("hi"),
    # so the system prompt did reach the upstream (the fake's record does not keep the messages).
    assert finish == Finish("stop", _usage(8))
    record = fake_upstream.wait_for_outcome(tag)
    assert (record["outcome"], record["model"], record["tokens_sent"]) == ("completed", MODEL, 8)
    assert len(fake_upstream.requests(tag)) == 1


def test_openai_provider_max_tokens_below_answer_finishes_length(transport, fake_upstream):
    text, finish, failure, tag = _run(transport, fake_upstream, "tokens=8", max_tokens=5)
    assert failure is None
    assert text == expected_text(5)
    assert finish == Finish("length", _usage(5))
    assert fake_upstream.wait_for_outcome(tag)["outcome"] == "completed"


def test_openai_provider_content_filter_finish_is_passed_on(transport, fake_upstream):
    text, finish, failure, tag = _run(transport, fake_upstream, "tokens=4 finish=content_filter")
    assert failure is None
    assert text == expected_text(4)
    assert finish == Finish("content_filter", _usage(4))
    assert fake_upstream.wait_for_outcome(tag)["outcome"] == "completed"


def test_openai_provider_echo_of_tricky_text_arrives_exactly(transport, fake_upstream):
    tag = _tag()
    # The directive first: the fake removes it and the one space after it, leaving TRICKY alone.
    content = f"[fake echo tag={tag}] {TRICKY}"
    request = ChatRequest(({"role": "user", "content": content},), MODEL, 1000, None)
    with _provider(transport, fake_upstream.base_url) as provider:
        text, finish, failure = _collect(provider, request)
    assert failure is None
    assert text == TRICKY
    assert finish is not None and finish.reason == "stop"
    assert fake_upstream.wait_for_outcome(tag)["outcome"] == "completed"


def test_openai_provider_null_deltas_and_empty_choices_are_skipped(transport, fake_upstream):
    text, finish, failure, tag = _run(transport, fake_upstream, "tokens=8 fault=null_delta after=3")
    assert failure is None
    assert text == expected_text(8)
    assert finish == Finish("stop", _usage(8))
    assert fake_upstream.wait_for_outcome(tag)["outcome"] == "completed"


# --- the upstream refuses with an HTTP error before the stream opens ------------------------------------

STATUS_CASES = [
    # (directive, code, retry_after)
    ("fault=status status=401", "upstream_auth", None),
    ("fault=status status=403", "upstream_auth", None),
    ("fault=status status=400", "bad_request", None),
    ("fault=status status=404", "bad_request", None),
    ("fault=status status=409", "bad_request", None),
    ("fault=status status=422", "bad_request", None),
    ("fault=context", "context_too_long", None),
    ("fault=status status=429 retry_after=7", "rate_limited", 7.0),
    ("fault=quota", "quota_exhausted", None),
    ("fault=status status=500", "upstream_unavailable", None),
    ("fault=status status=502", "upstream_unavailable", None),
    ("fault=status status=503", "upstream_unavailable", None),
]


@pytest.mark.parametrize(("directive", "code", "retry_after"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
def test_openai_provider_http_error_status_maps_to_fail_code(
    transport, fake_upstream, directive, code, retry_after
):
    text, finish, failure, tag = _run(transport, fake_upstream, directive)
    assert (text, finish) == ("", None)
    _assert_failure(failure, code, retry_after)
    # Asked once: no SDK retry sleeps through the user's first-token budget.
    [record] = fake_upstream.requests(tag)
    assert record["outcome"] == "error_status"


def test_openai_provider_with_retries_sends_through_the_sdks_own_loop(transport, fake_upstream):
    # OPENAI_MAX_RETRIES above 0: the SDK's request loop sends the request, and retries a 503 once.
    with _provider(transport, fake_upstream.base_url, max_retries=1) as provider:
        request, tag = _ask("fault=status status=503")
        text, finish, failure = _collect(provider, request)
        assert (text, finish) == ("", None)
        _assert_failure(failure, "upstream_unavailable")
        assert [r["outcome"] for r in fake_upstream.requests(tag)] == ["error_status", "error_status"]
        request, tag = _ask("tokens=5")
        text, finish, failure = _collect(provider, request)
    assert (text, finish, failure) == (expected_text(5), Finish("stop", _usage(5)), None)
    assert len(fake_upstream.requests(tag)) == 1


@pytest.mark.parametrize("dialect", CONTEXT_DIALECTS)
def test_openai_provider_context_error_of_each_server_family_is_context_too_long(
    transport, fake_upstream, dialect
):
    # Each family words "the conversation does not fit" its own way; the user is told to shorten it.
    text, finish, failure, tag = _run(transport, fake_upstream, f"fault=context dialect={dialect}")
    assert (text, finish) == ("", None)
    _assert_failure(failure, "context_too_long")
    assert failure.detail.startswith("HTTP 400: ")
    [record] = fake_upstream.requests(tag)
    assert (record["outcome"], record["fault"]) == ("error_status", "context")


def test_openai_provider_failure_message_hides_the_upstream_text(transport, fake_upstream):
    _, _, failure, _ = _run(transport, fake_upstream, "fault=status status=429 retry_after=7")
    assert failure is not None
    assert "Rate limit reached" not in str(failure)
    assert "Rate limit reached" not in failure.message
    assert "Rate limit reached" not in repr(failure.event_data())
    assert "Rate limit reached" in failure.detail


def test_openai_provider_connect_refused_is_upstream_unreachable(transport):
    request, _ = _ask("tokens=8")
    with _provider(transport, f"http://127.0.0.1:{free_port()}/v1") as provider:
        text, finish, failure = _collect(provider, request)
    assert (text, finish) == ("", None)
    _assert_failure(failure, "upstream_unreachable")


# --- the stream opens, then goes wrong ------------------------------------------------------------------


MID_ANSWER_CASES = [
    # (directive, tokens delivered before the fault, code)
    ("tokens=8 fault=drop after=3", 3, "connection_lost"),
    # A slower pace leaves the client time to read the 3 tokens before the RST discards unread bytes.
    ("tokens=8 tps=50 fault=reset after=3", 3, "connection_lost"),
    ("tokens=8 fault=error_object after=2", 2, "upstream_error"),
    ("tokens=8 fault=no_done after=2", 2, "truncated"),
]


@pytest.mark.parametrize(
    ("directive", "delivered", "code"), MID_ANSWER_CASES, ids=[c[0] for c in MID_ANSWER_CASES]
)
def test_openai_provider_fault_mid_answer_keeps_the_text_so_far(
    transport, fake_upstream, directive, delivered, code
):
    text, finish, failure, tag = _run(transport, fake_upstream, directive)
    assert (text, finish) == (expected_text(delivered), None)
    _assert_failure(failure, code)
    if code == "upstream_error":  # the upstream's own words reach the log only
        assert "The server had an error" in failure.detail
    assert fake_upstream.wait_for_outcome(tag)["outcome"] == "fault"


def test_openai_provider_garbage_frame_is_malformed_chunk(transport, fake_upstream):
    # 100 tokens at 100 per second: the fake is still sending when the provider gives up and hangs up.
    text, finish, failure, tag = _run(transport, fake_upstream, "tokens=100 tps=100 fault=garbage after=2")
    assert (text, finish) == (expected_text(2), None)
    _assert_failure(failure, "malformed_chunk")
    record = fake_upstream.wait_for_outcome(tag)
    assert record["outcome"] == "client_closed"
    assert record["tokens_sent"] < 100


def test_openai_provider_non_event_stream_content_type_is_malformed_chunk(transport, fake_upstream):
    text, finish, failure, tag = _run(transport, fake_upstream, "fault=content_type")
    assert (text, finish) == ("", None)
    _assert_failure(failure, "malformed_chunk")
    assert "application/json" in failure.detail
    assert fake_upstream.wait_for_outcome(tag)["outcome"] == "fault"


# --- the consumer stops early ---------------------------------------------------------------------------


def test_openai_provider_close_reaches_the_upstream(transport, fake_upstream):
    request, tag = _ask("tokens=50 tps=5")
    with _provider(transport, fake_upstream.base_url) as provider:
        stream = provider.stream(request, SYSTEM_PROMPT)
        assert [_next_text(stream), _next_text(stream)] == [Delta("Hello"), Delta(",")]
        stream.close()  # what the producer does on stop or a closed tab: GeneratorExit at the yield
        record = fake_upstream.wait_for_outcome(tag, timeout=1.0)
    assert record["outcome"] == "client_closed"
    assert record["tokens_sent"] < 50


def test_openai_provider_reuses_the_connection_after_a_whole_answer(fake_upstream):
    # Only over the lean transport: the answer ends at [DONE], and the lean transport then reads
    # the body's last chunk without waiting, so the connection can be kept. (httpx closes it.)
    (first, first_tag), (second, second_tag) = _ask("tokens=3"), _ask("tokens=3")
    with _provider("lean", fake_upstream.base_url) as provider:
        for request in (first, second):
            text, finish, failure = _collect(provider, request)
            assert (text, failure) == (expected_text(3), None)
    [one], [two] = fake_upstream.requests(first_tag), fake_upstream.requests(second_tag)
    assert one["connection"] == two["connection"]


def test_openai_provider_open_stream_keeps_only_its_body(transport, fake_upstream):
    # Thousands of streams stay open at once, so what each one keeps counts (the benchmark's memory
    # per open stream, docs/performance.md): an open
    # stream holds neither the request and response objects nor the conversation, only the body.
    request, _ = _ask("tokens=50 tps=20")
    conversation = weakref.ref(request)
    with _provider(transport, fake_upstream.base_url) as provider:
        stream = provider.stream(request, SYSTEM_PROMPT)
        del request
        try:
            assert _next_text(stream) == Delta("Hello")
            gc.collect()
            assert conversation() is None
            # The endpoint's template (one per client, what every run's request is made from) stays.
            template = provider.endpoint.template
            kept = [
                obj
                for obj in gc.get_objects()
                if isinstance(obj, (httpx2.Request, httpx2.Response)) and obj is not template
            ]
            assert kept == []
        finally:
            stream.close()


def test_openai_provider_never_reuses_a_connection_closed_mid_answer(transport, fake_upstream):
    (first, first_tag), (second, second_tag) = _ask("tokens=50 tps=20"), _ask("tokens=3")
    with _provider(transport, fake_upstream.base_url) as provider:
        stream = provider.stream(first, SYSTEM_PROMPT)
        assert _next_text(stream) == Delta("Hello")
        stream.close()
        assert fake_upstream.wait_for_outcome(first_tag, timeout=1.0)["outcome"] == "client_closed"
        assert _collect(provider, second) == (expected_text(3), Finish("stop", _usage(3)), None)
    [one], [two] = fake_upstream.requests(first_tag), fake_upstream.requests(second_tag)
    assert one["connection"] != two["connection"]
