"""The one small interface every model provider implements, and the failures it may raise.

A provider turns a validated ``ChatRequest`` into an iterator of ``Delta`` (text as it arrives)
ending with exactly one ``Finish``. It knows nothing about runs, SSE or Flask; the producer
(streamchat/producer.py) drives it, enforces the first-token and stall timeouts, and may close it
at any time (stop button, closed tab). So a provider must release its upstream connection in a
``with`` or ``finally`` block: ``GeneratorExit`` and greenlet kills arrive at its ``yield`` or at a
blocking read, and are never caught.

Failures are raised as ``ProviderFailure`` with a stable ``code`` from ``FAIL_CODES`` and a message
that is safe to show a user. The upstream's own error text stays in the server log.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

from streamchat.chat_request import ChatRequest

# code -> (retryable, safe message shown to the user). The API's `fail` event codes, fixed.
FAIL_CODES: dict[str, tuple[bool, str]] = {
    "upstream_auth": (False, "The model server refused our credentials."),
    "bad_request": (False, "The model server rejected the request."),
    "context_too_long": (False, "The conversation is too long for this model. Shorten it or start anew."),
    "rate_limited": (True, "The model server is rate limiting us. Try again shortly."),
    "quota_exhausted": (False, "The model account has run out of quota."),
    "upstream_unavailable": (True, "The model server is unavailable right now."),
    "upstream_unreachable": (True, "The model server could not be reached."),
    "first_token_timeout": (True, "The model did not start answering in time."),
    "stalled": (True, "The model stopped sending in the middle of the answer."),
    "connection_lost": (True, "The connection to the model server was lost mid-answer."),
    "upstream_error": (False, "The model server reported an error while answering."),
    "truncated": (True, "The model server ended the answer without finishing it."),
    "malformed_chunk": (False, "The model server sent data we could not read."),
    "internal": (False, "Something went wrong on our side."),
}


@dataclass(frozen=True)
class Delta:
    """A piece of answer text and how many upstream tokens it carries.

    The text is empty when the upstream sent data without answer text (a role chunk, a reasoning
    model's thinking, a comment): no token for the user, but proof for the producer's clocks that
    the upstream is alive.
    """

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class Finish:
    """The end of an answer: why it ended, and token usage when the upstream reported it."""

    reason: str
    usage: dict[str, int] | None = None


class ProviderFailure(Exception):
    """A failure with a stable ``fail`` code; ``str(self)`` is the safe user message."""

    def __init__(self, code: str, retry_after: float | None = None, detail: str = "") -> None:
        if code not in FAIL_CODES:
            raise ValueError(f"unknown fail code {code!r}")
        self.code = code
        self.retryable, self.message = FAIL_CODES[code]
        self.retry_after = retry_after
        # For the server log only: the upstream's own words, never sent to the client.
        self.detail = detail
        super().__init__(self.message)

    def event_data(self) -> dict:
        """Return the payload of the ``fail`` event."""
        data: dict = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.retry_after is not None:
            data["retry_after"] = self.retry_after
        return data


class Provider(Protocol):
    """What the producer needs from a model provider."""

    def stream(self, request: ChatRequest, system_prompt: str) -> Generator[Delta | Finish, None, None]:
        """Yield the answer as deltas, then one Finish; raise ProviderFailure on failure."""
        ...
