"""The openai provider: streaming chat completions from any OpenAI-compatible server.

This is the only module of the app that imports ``openai``. It works with OpenAI itself and with
servers that speak the same API (vLLM, llama.cpp's server, Ollama), chosen by OPENAI_BASE_URL,
OPENAI_API_KEY and OPENAI_MODEL. To try it without an account, run the fake upstream::

    python -m streamchat.fake_upstream --port 8001 &
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake gunicorn

Deliberate choices:

- The client is created lazily, on the first request in each worker, never at import: with
  gunicorn's ``preload_app`` the app is imported before the workers fork, and a connection pool
  must not cross a fork.
- Explicit timeouts. The SDK's read timeout sits above FIRST_TOKEN_TIMEOUT_SECONDS and
  STALL_TIMEOUT_SECONDS so that the producer's clocks decide, with our own ``fail`` codes.
- ``max_retries`` defaults to 0: a 429 or 503 becomes a retryable ``fail`` event with
  ``retry_after`` at once, instead of the SDK sleeping through the user's first-token budget.
- The stream is always used as a context manager, so every exit path (finish, failure, stop, a
  closed tab) closes the upstream response, and the model stops generating.
- Every upstream failure maps to a stable code (see FAIL_CODES); the upstream's own words go to
  the server log only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator

import httpx2
import openai
import pydantic

from streamchat.chat_request import ChatRequest
from streamchat.config import Settings
from streamchat.providers.base import Delta, Finish, ProviderFailure

log = logging.getLogger(__name__)

# Local servers (llama.cpp, vLLM, Ollama) need no key, but the SDK refuses to start without one.
PLACEHOLDER_KEY = "no-key-needed"
# The finish reasons the API passes on; others (tool_calls, function_call) end an answer normally.
PASSED_ON_FINISH_REASONS = ("stop", "length", "content_filter")
# How an upstream phrases "too long": OpenAI's code, vLLM's and llama.cpp's messages.
_CONTEXT_HINTS = ("context_length_exceeded", "maximum context length", "context size", "context length")


class OpenAICompatibleProvider:
    """Streams chat completions through the official openai SDK."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: openai.OpenAI | None = None

    @property
    def client(self) -> openai.OpenAI:
        """The SDK client, created on first use in this worker process."""
        if self._client is None:
            self._client = _make_client(self.settings)
        return self._client

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
        try:
            stream = self.client.chat.completions.create(**params)
        except openai.APIStatusError as err:
            raise _status_failure(err) from None
        except openai.APIConnectionError as err:
            # Raised before the stream opened: nothing answered (refused, DNS, TLS, connect timeout).
            raise ProviderFailure("upstream_unreachable", detail=repr(err)) from None
        with stream:
            content_type = stream.response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise ProviderFailure("malformed_chunk", detail=f"content-type {content_type!r}")
            yield from _relay_chunks(stream)


def _relay_chunks(stream: openai.Stream) -> Iterator[Delta | Finish]:
    """Turn chat.completion.chunk objects into deltas, keeping the finish reason and usage."""
    finish_reason = None
    usage = None
    try:
        for chunk in stream:
            # The SDK builds chunk objects without validating them, so check the shapes we rely on.
            if not isinstance(getattr(chunk, "choices", None), list):
                raise ProviderFailure("malformed_chunk", detail=f"no choices list in {chunk!r:.200}")
            if chunk.usage is not None:
                usage = _usage(chunk.usage)
            # Usage-only chunks have no choices; role-only and null deltas carry no text.
            for choice in chunk.choices:
                if choice.index != 0:
                    continue
                content = choice.delta.content if choice.delta is not None else None
                if content is not None and not isinstance(content, str):
                    raise ProviderFailure("malformed_chunk", detail=f"content {content!r:.200}")
                if content:
                    yield Delta(content)
                if choice.finish_reason is not None:
                    finish_reason = choice.finish_reason
    except openai.APITimeoutError as err:
        raise ProviderFailure("stalled", detail=repr(err)) from None
    except openai.APIConnectionError as err:
        # The stream had opened, so this is a connection cut mid-answer, not a refused connect.
        raise ProviderFailure("connection_lost", detail=repr(err)) from None
    except openai.APIError as err:
        # An error object inside the stream (the SDK raises it as a plain APIError).
        raise ProviderFailure("upstream_error", detail=f"{err.message} body={err.body!r}") from None
    except (json.JSONDecodeError, pydantic.ValidationError) as err:
        raise ProviderFailure("malformed_chunk", detail=repr(err)) from None
    if finish_reason is None:
        raise ProviderFailure("truncated", detail="stream ended without a finish reason")
    reason = finish_reason if finish_reason in PASSED_ON_FINISH_REASONS else "stop"
    yield Finish(reason, usage)


def _usage(usage: object) -> dict[str, int] | None:
    """Return prompt, completion and total tokens as the upstream reported them, if they are counts."""
    counts = {
        name: getattr(usage, name, None) for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    return counts if all(type(value) is int for value in counts.values()) else None


def _status_failure(err: openai.APIStatusError) -> ProviderFailure:
    """Map an HTTP error status from the upstream to a stable fail code."""
    status = err.status_code
    detail = f"HTTP {status}: {err.message}"
    if status in (401, 403):
        return ProviderFailure("upstream_auth", detail=detail)
    if status == 429:
        if _error_code(err) == "insufficient_quota":
            return ProviderFailure("quota_exhausted", detail=detail)
        return ProviderFailure("rate_limited", retry_after=_retry_after(err.response), detail=detail)
    if status in (400, 404, 409, 413, 422):
        said = f"{_error_code(err)} {err.message}".lower()
        if any(hint in said for hint in _CONTEXT_HINTS):
            return ProviderFailure("context_too_long", detail=detail)
        return ProviderFailure("bad_request", detail=detail)
    if status >= 500:
        return ProviderFailure("upstream_unavailable", detail=detail)
    return ProviderFailure("upstream_error", detail=detail)


def _error_code(err: openai.APIStatusError) -> str:
    """Return the ``code`` (or ``type``) of an OpenAI-style error body, or ''."""
    body = err.body if isinstance(err.body, dict) else {}
    inner = body.get("error", body)
    if not isinstance(inner, dict):
        return ""
    return str(inner.get("code") or inner.get("type") or "")


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


def _make_client(settings: Settings) -> openai.OpenAI:
    """Build the SDK client with explicit timeouts, retries and a pool sized for many streams."""
    read_timeout = max(settings.first_token_timeout_seconds, settings.stall_timeout_seconds) + 30
    timeout = httpx2.Timeout(
        connect=settings.openai_connect_timeout_seconds, read=read_timeout, write=30.0, pool=30.0
    )
    limits = httpx2.Limits(
        max_connections=settings.openai_max_connections,
        max_keepalive_connections=settings.openai_max_connections,
        keepalive_expiry=30.0,
    )
    api_key = settings.openai_api_key
    if not api_key:
        log.info("OPENAI_BASE_URL is set without OPENAI_API_KEY: sending a placeholder key")
        api_key = PLACEHOLDER_KEY
    return openai.OpenAI(
        api_key=api_key,
        base_url=settings.openai_base_url or None,
        timeout=timeout,
        max_retries=settings.openai_max_retries,
        http_client=openai.DefaultHttpxClient(timeout=timeout, limits=limits),
    )
