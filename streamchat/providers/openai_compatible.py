"""The openai provider: streaming chat completions from any OpenAI-compatible server.

This is the only module of the app that imports ``openai``. It works with OpenAI itself and with
servers that speak the same API (vLLM, llama.cpp's server, Ollama), chosen by OPENAI_BASE_URL,
OPENAI_API_KEY and OPENAI_MODEL. To try it without an account, run the fake upstream::

    python -m fakeupstream --port 8001 &
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake gunicorn

Deliberate choices:

- The client is created lazily, on the first request in each worker, never at import: an app
  imported before a fork must not carry a connection pool across it (gunicorn.conf.py refuses
  ``--preload`` for this and more; an app built by a test may be used after a fork).
- Explicit timeouts for connecting and writing. Reading has none of its own: the producer's clocks
  (FIRST_TOKEN_TIMEOUT_SECONDS, STALL_TIMEOUT_SECONDS) decide, with our own ``fail`` codes, and
  cost one timer per run instead of one per chunk.
- ``max_retries`` defaults to 0: a 429 or 503 becomes a retryable ``fail`` event with
  ``retry_after`` at once, instead of the SDK sleeping through the user's first-token budget.
- The body is always closed in a ``finally`` block, so every exit path (finish, failure, stop, a
  closed tab) closes the upstream connection, and the model stops generating.
- The SDK builds the client: base URL, key, headers, its HTTP client and transport. What it would
  do again for every request is the same every time (its options models, the headers merged, the
  URL joined): about 270 us of a worker's CPU per request, more than the rest of a one-token
  answer's relay. So the request to Chat Completions is prepared once per client, from the SDK's
  own public ``base_url``, ``default_headers`` and ``auth_headers``, and each run sends its body
  through the SDK's HTTP client (``ChatCompletionsEndpoint``). With OPENAI_MAX_RETRIES above 0 the
  SDK's own request loop sends it, since retrying is that loop's job.
- The streaming body is read raw: our own small SSE decoder (upstream_sse.py) and ``json.loads``
  instead of a typed object per chunk, over a lean HTTP/1.1 transport (lean_transport.py). Both
  were the relay's largest costs per token (the benchmark's per-token figures,
  docs/performance.md). OPENAI_TRANSPORT=httpx puts httpx's own transport back, for HTTP proxies.
- Every upstream failure maps to a stable code (see FAIL_CODES); the upstream's own words go to
  the server log only. An HTTP error is mapped from its status and its body's ``type``, ``code``
  and ``message`` (``fail_code_for_status``). "The conversation does not fit the model's context
  window" is worded differently by each server family (OpenAI, vLLM, llama.cpp, LiteLLM, Ollama),
  so each family's words are recognised, narrowly, so that the user is told to shorten the
  conversation; any other 400 stays ``bad_request``. The fake upstream sends each family's
  recorded body (``fault=context dialect=NAME``, fakeupstream/errors.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator

import httpx2
import openai

from streamchat.chat_request import ChatRequest
from streamchat.config import Settings
from streamchat.protocol import FailCode
from streamchat.providers.base import SIGN_OF_LIFE, Delta, Finish, ProviderFailure
from streamchat.providers.lean_transport import LeanTransport, PreparedRequest
from streamchat.providers.upstream_sse import UpstreamSSEDecoder

log = logging.getLogger(__name__)

# Local servers (llama.cpp, vLLM, Ollama) need no key, but the SDK refuses to start without one.
PLACEHOLDER_KEY = "no-key-needed"
# The finish reasons the API passes on; others (tool_calls, function_call) end an answer normally.
PASSED_ON_FINISH_REASONS = ("stop", "length", "content_filter")
# How each server family says "the conversation does not fit the model's context window", in the
# fields of its error body (each family's body, and where it was recorded from: fakeupstream/errors.py).
_CONTEXT_CODES = ("context_length_exceeded",)  # OpenAI's (and Azure OpenAI's) error code
_CONTEXT_TYPES = ("exceed_context_size_error",)  # llama.cpp's server: the error type
_CONTEXT_PHRASES = (  # in the message, compared in lower case
    "maximum context length",  # OpenAI's and vLLM's "This model's maximum context length is N tokens"
    "exceeds the available context size",  # llama.cpp's message, for versions without the type
    "contextwindowexceedederror",  # LiteLLM: its exception's name opens its proxy's message
    "input length exceeds the context length",  # Ollama's runner
)
# Ollama versions whose OpenAI endpoint sent every error as a 500 sent this one so too.
_CONTEXT_PHRASES_AT_500 = ("input length exceeds the context length",)


class OpenAICompatibleProvider:
    """Streams chat completions through the official openai SDK."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: openai.OpenAI | None = None
        self._endpoint: ChatCompletionsEndpoint | None = None

    @property
    def client(self) -> openai.OpenAI:
        """The SDK client, created on first use in this worker process."""
        if self._client is None:
            self._create_client()
        return self._client

    @property
    def endpoint(self) -> ChatCompletionsEndpoint:
        """The Chat Completions request, prepared once from the SDK client."""
        if self._endpoint is None:
            self._create_client()
        return self._endpoint

    def _create_client(self) -> None:
        http_client, lean = _make_http_client(self.settings)
        self._client = _make_client(self.settings, http_client)
        self._endpoint = ChatCompletionsEndpoint(self._client, http_client, lean)

    def stream(self, request: ChatRequest, system_prompt: str) -> Iterator[Delta | Finish]:
        """Yield the upstream's text deltas, then one Finish; raise ProviderFailure on failure."""
        params: dict = {
            "model": request.model,
            "messages": [{"role": "system", "content": system_prompt}, *request.messages],
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if self.settings.openai_max_retries:
            response = _send_through_the_sdk(self.client, params)
        else:
            response = self.endpoint.send(params)
        content_type = response.headers.get("content-type", "")
        # From here on, an open stream keeps only its body and the way to close it: not the request
        # and response objects (several KB per stream), nor the request's copy of the conversation.
        # Nothing here reads them again, and thousands of streams may be open at once. (The
        # producer keeps the conversation's texts for the run, to take them out of a failure's log
        # line should the upstream quote them: a price paid for privacy, not by oversight.)
        pieces, close = _body(response)
        del response, params, request
        try:  # closing the body on every exit, a stop included, is what stops the model
            if not content_type.startswith("text/event-stream"):
                raise ProviderFailure(FailCode.MALFORMED_CHUNK, detail=f"content-type {content_type!r}")
            yield from read_answer(pieces)
        finally:
            close()


class ChatCompletionsEndpoint:
    """``POST /chat/completions``, prepared once per SDK client: its URL, headers and timeouts.

    Everything but the body is the same for every run: the URL is the SDK's ``base_url`` joined
    once, the headers are the SDK's public ``default_headers`` and ``auth_headers`` (its
    User-Agent, ``X-Stainless-*`` and ``Authorization: Bearer``) with its HTTP client's own, and
    the timeouts are the client's. With the lean transport the request's head is worked out once as
    bytes (lean_transport.PreparedRequest), and each run sends it with its body in one write; with
    OPENAI_TRANSPORT=httpx each run's request goes through the SDK's HTTP client, whose proxies from
    the environment apply. Either way, no SDK machinery runs per request. A refused request becomes
    the same ``ProviderFailure`` as through the SDK's typed errors.
    """

    def __init__(self, client: openai.OpenAI, http_client: httpx2.Client, lean: LeanTransport | None) -> None:
        self._http = http_client  # the SDK's HTTP client (_make_http_client)
        self._lean = lean
        headers = {**client.default_headers, **client.auth_headers}
        template = self._http.build_request(
            "POST",
            client.base_url.join("chat/completions"),
            # The SDK leaves out headers set to its Omit marker (an organization nobody chose).
            headers={name: value for name, value in headers.items() if isinstance(value, str)},
        )
        self.template = template  # what every run's request is made from: one per client, not per run
        self.headers = [
            (name, value) for name, value in template.headers.raw if name.lower() != b"content-length"
        ]
        self._prepared = PreparedRequest(template) if lean is not None else None

    def send(self, params: dict) -> httpx2.Response:
        """Send one run's request; return the streaming response, or raise its ProviderFailure."""
        body = json.dumps(params, separators=(",", ":")).encode()
        try:
            if self._lean is not None:
                response = self._lean.send(self._prepared, body)
            else:
                request = httpx2.Request(
                    "POST",
                    self.template.url,
                    headers=self.headers,
                    content=body,
                    extensions=self.template.extensions,
                )
                response = self._http.send(request, stream=True)
        except httpx2.RequestError as err:
            # Nothing answered: refused, DNS, TLS, a connect timeout (the SDK's APIConnectionError).
            raise ProviderFailure(FailCode.UPSTREAM_UNREACHABLE, detail=repr(err)) from None
        if response.status_code >= 400:
            raise _refused(response)
        return response


def _refused(response: httpx2.Response) -> ProviderFailure:
    """Read a refused request's error body (as the SDK does for its APIStatusError) and map it.

    Both ways of sending come here: ours with the response, the SDK's with its error's response.
    """
    try:
        text = response.read().decode("utf-8", "replace").strip()
    except httpx2.RequestError:
        text = ""
    finally:
        response.close()
    body: object = text
    with contextlib.suppress(ValueError):  # the SDK, too, hands over the text when it is not JSON
        body = json.loads(text)
    status = response.status_code
    code = fail_code_for_status(status, body)
    retry_after = _retry_after(response) if code == FailCode.RATE_LIMITED else None
    return ProviderFailure(code, retry_after=retry_after, detail=f"HTTP {status}: {text[:1000]}")


def _send_through_the_sdk(client: openai.OpenAI, params: dict) -> httpx2.Response:
    """Send the request through the SDK's own request loop, which retries (OPENAI_MAX_RETRIES)."""
    # `client.post` with `cast_to=httpx.Response` is the SDK's documented way to call an endpoint
    # yourself: `create()` would also walk our plain parameters through its type annotations.
    try:
        return client.post("/chat/completions", body=params, cast_to=httpx2.Response, stream=True)
    except openai.APIStatusError as err:  # the SDK has read the body: read again, it is kept
        raise _refused(err.response) from None
    except openai.APIConnectionError as err:
        # Raised before the stream opened: nothing answered (refused, DNS, TLS, connect timeout).
        raise ProviderFailure(FailCode.UPSTREAM_UNREACHABLE, detail=repr(err)) from None


def _body(response: httpx2.Response) -> tuple[Iterator[bytes], Callable[[], None]]:
    """Return the body's pieces as they arrive, through as few layers as possible, and its close.

    Every piece passes through every layer, for every token of every stream. So when the body is
    not compressed, read the transport's own stream (httpx only wraps it to time it), not the
    response's iterators, which count and re-chunk every piece. Only a compressed body needs
    httpx's decoding iterator. The stream does not refer back to the response, so the caller can
    let go of the response and its request.
    """
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return response.iter_bytes(), response.close
    stream = response.stream
    return iter(stream), stream.close


def read_answer(body: Iterator[bytes]) -> Iterator[Delta | Finish]:
    """Turn the streaming body into deltas, one per network read, then one Finish.

    This is the relay's fast path. Whatever text one read brought (one chunk when the relay keeps
    up, several under load) becomes one Delta carrying its count of chunks: under load, the cost of
    an event is paid per batch instead of per token, and when the relay keeps up nothing waits.
    A failure part-way through a read still delivers the text that came before it.
    """
    decoder = UpstreamSSEDecoder()
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    done = False
    try:
        for piece in body:
            texts: list[str] = []
            try:
                for _event, data in _feed(decoder, piece):
                    if data.startswith(b"[DONE]"):
                        done = True
                        break
                    chunk = _load_chunk(data)
                    if chunk.get("usage") is not None:
                        usage = _usage(chunk["usage"])
                    text, reason = _first_choice(chunk)
                    if text:
                        texts.append(text)
                    if reason is not None:
                        finish_reason = reason
            except ProviderFailure:
                if texts:
                    yield Delta("".join(texts), len(texts))
                raise
            if texts:
                yield Delta("".join(texts), len(texts))
            elif not done:  # data but no answer text: alive (a reasoning model may think for minutes)
                yield SIGN_OF_LIFE
            if done:
                break
    except httpx2.TimeoutException as err:
        raise ProviderFailure(FailCode.STALLED, detail=repr(err)) from None
    except httpx2.DecodingError as err:  # a compressed body that does not decompress
        raise ProviderFailure(FailCode.MALFORMED_CHUNK, detail=repr(err)) from None
    except httpx2.RequestError as err:
        # The stream had opened, so this is a connection cut mid-answer, not a refused connect.
        raise ProviderFailure(FailCode.CONNECTION_LOST, detail=repr(err)) from None
    # [DONE] or a finish reason means the upstream finished; neither means it was cut short.
    if finish_reason is None and not done:
        raise ProviderFailure(
            FailCode.TRUNCATED, detail="stream ended with neither a finish reason nor [DONE]"
        )
    reason = finish_reason if finish_reason in PASSED_ON_FINISH_REASONS else "stop"
    yield Finish(reason, usage)


def _feed(decoder: UpstreamSSEDecoder, piece: bytes) -> list[tuple[str, bytes]]:
    """Feed a piece of body to the decoder; an endless line or event is a malformed stream."""
    try:
        return decoder.feed(piece)
    except ValueError as err:
        raise ProviderFailure(FailCode.MALFORMED_CHUNK, detail=str(err)) from None


def _load_chunk(data: bytes) -> dict:
    """Parse one chunk's JSON; raise for an error object or a shape we cannot read."""
    try:
        # Decoded first: json.loads on bytes decodes with "surrogatepass", which is slower.
        chunk = json.loads(data.decode("utf-8"))
    except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise ProviderFailure(FailCode.MALFORMED_CHUNK, detail=f"{err}: {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise ProviderFailure(FailCode.MALFORMED_CHUNK, detail=f"not an object: {data[:200]!r}")
    if chunk.get("error"):
        # An error object inside the stream (the SDK raises these as APIError too).
        raise ProviderFailure(FailCode.UPSTREAM_ERROR, detail=f"error in stream: {chunk['error']!r:.500}")
    if not isinstance(chunk.get("choices"), list):
        raise ProviderFailure(FailCode.MALFORMED_CHUNK, detail=f"no choices list in {data[:200]!r}")
    return chunk


def _first_choice(chunk: dict) -> tuple[str | None, str | None]:
    """Return the text and finish reason of choice 0 (usage-only chunks have no choices)."""
    text = reason = None
    for choice in chunk["choices"]:
        if not isinstance(choice, dict):
            raise ProviderFailure(FailCode.MALFORMED_CHUNK, detail=f"choice {choice!r:.200}")
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None  # role-only, null deltas
        if content is not None and not isinstance(content, str):
            raise ProviderFailure(FailCode.MALFORMED_CHUNK, detail=f"content {content!r:.200}")
        text = content
        if isinstance(choice.get("finish_reason"), str):
            reason = choice["finish_reason"]
    return text, reason


def _usage(usage: object) -> dict[str, int] | None:
    """Return prompt, completion and total tokens as the upstream reported them, if they are counts."""
    if not isinstance(usage, dict):
        return None
    counts = {name: usage.get(name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return counts if all(type(value) is int for value in counts.values()) else None


def fail_code_for_status(status: int, body: object) -> FailCode:
    """Return the fail code for an HTTP error status and its error body, as the SDK hands it over."""
    type_, code, message = _error_fields(body)
    if status in (401, 403):
        return FailCode.UPSTREAM_AUTH
    if status == 429:
        return FailCode.QUOTA_EXHAUSTED if "insufficient_quota" in (type_, code) else FailCode.RATE_LIMITED
    if _is_context_overflow(status, type_, code, message.lower()):
        return FailCode.CONTEXT_TOO_LONG
    if status in (400, 404, 409, 413, 422):
        return FailCode.BAD_REQUEST
    if status >= 500:
        return FailCode.UPSTREAM_UNAVAILABLE
    return FailCode.UPSTREAM_ERROR


def _error_fields(body: object) -> tuple[str, str, str]:
    """Return an error body's ``type``, ``code`` and ``message`` as text ("" when absent).

    The SDK hands over the object inside ``{"error": ...}`` when there is one (vLLM before its
    OpenAI-shaped errors sent the fields at the top level), and the raw text when the body was
    not JSON at all.
    """
    if isinstance(body, str):
        return "", "", body
    inner = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(inner, str):  # {"error": "..."}, the shape of Ollama's own API
        return "", "", inner
    if not isinstance(inner, dict):
        return "", "", ""
    # A code may be a number (vLLM and llama.cpp send 400) or null, which must not become "None".
    type_, code, message = (
        "" if inner.get(key) is None else str(inner[key]) for key in ("type", "code", "message")
    )
    return type_, code, message


def _is_context_overflow(status: int, type_: str, code: str, message: str) -> bool:
    """Tell whether an error says the conversation does not fit the model's context window."""
    if status == 500:
        return any(phrase in message for phrase in _CONTEXT_PHRASES_AT_500)
    if status not in (400, 413):
        return False
    return code in _CONTEXT_CODES or type_ in _CONTEXT_TYPES or any(p in message for p in _CONTEXT_PHRASES)


def _retry_after(response: httpx2.Response) -> float | None:
    """Read Retry-After (seconds) or retry-after-ms; None when absent or an HTTP date."""
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            seconds = float(headers["retry-after-ms"]) / 1000
        elif "retry-after" in headers:
            seconds = float(headers["retry-after"])
        else:
            return None
    except ValueError:
        return None
    # float() also accepts "nan" and "inf", which JSON cannot carry.
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _make_client(settings: Settings, http_client: httpx2.Client) -> openai.OpenAI:
    """Build the SDK client with its key, base URL, retries and HTTP client."""
    api_key = settings.openai_api_key
    if not api_key:
        log.info("OPENAI_BASE_URL is set without OPENAI_API_KEY: sending a placeholder key")
        api_key = PLACEHOLDER_KEY
    return openai.OpenAI(
        api_key=api_key,
        base_url=settings.openai_base_url or None,
        timeout=http_client.timeout,
        max_retries=settings.openai_max_retries,
        http_client=http_client,
    )


def _make_http_client(settings: Settings) -> tuple[httpx2.Client, LeanTransport | None]:
    """Build the SDK's HTTP client (and its lean transport, if it has one): timeouts, a big pool."""
    # No read timeout: the producer's first-token and stall clocks are the read timeout, with our
    # own fail codes, at the cost of one timer per run. A socket timeout would start and cancel a
    # timer around every chunk read under gevent (the benchmark's profile, docs/performance.md).
    timeout = httpx2.Timeout(
        connect=settings.openai_connect_timeout_seconds, read=None, write=30.0, pool=30.0
    )
    if settings.openai_transport == "lean":
        proxies = [name for name in os.environ if name.lower() in ("http_proxy", "https_proxy", "all_proxy")]
        if proxies:
            log.warning(
                "%s is set but the lean transport goes direct: set OPENAI_TRANSPORT=httpx", proxies[0]
            )
        lean = LeanTransport(max_idle_per_origin=settings.openai_max_connections)
        http_client = openai.DefaultHttpxClient(timeout=timeout, transport=lean)
    else:  # httpx's own transport, which also honours HTTP(S)_PROXY from the environment
        limits = httpx2.Limits(
            max_connections=settings.openai_max_connections,
            max_keepalive_connections=settings.openai_max_connections,
            keepalive_expiry=30.0,
        )
        return openai.DefaultHttpxClient(timeout=timeout, limits=limits), None
    return http_client, lean
