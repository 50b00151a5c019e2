"""The one small interface every model provider implements, and the failures it may raise.

A provider turns a validated ``ChatRequest`` into an iterator of ``Delta`` (text as it arrives)
ending with exactly one ``Finish``. It knows nothing about runs, SSE or Flask; the producer
(streamchat/producer.py) drives it, enforces the first-token and stall timeouts, and may close it
at any time (stop button, closed tab). So a provider must release its upstream connection in a
``with`` or ``finally`` block: ``GeneratorExit`` and greenlet kills arrive at its ``yield`` or at a
blocking read, and are never caught.

Failures are raised as ``ProviderFailure`` with a stable ``code`` from ``FAIL_CODES`` (in
streamchat/protocol.py, with every other name of the protocol) and a message that is safe to show a
user. The upstream's own error text stays in the server log.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

from streamchat.chat_request import ChatRequest
from streamchat.protocol import FAIL_CODES, fail_data


@dataclass(frozen=True)
class Delta:
    """A piece of answer text and how many upstream tokens it carries.

    The text is empty when the upstream sent data without answer text (a role chunk, a reasoning
    model's thinking, a comment): no token for the user, but proof for the producer's clocks that
    the upstream is alive.
    """

    text: str
    tokens: int = 1


# Data from the upstream with no answer text in it (a role chunk, a reasoning model's thinking, an SSE
# comment): no token for the user, only proof for the producer's clocks that the upstream is alive.
SIGN_OF_LIFE = Delta("", 0)


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
        return fail_data(self.code, self.retry_after)


class Provider(Protocol):
    """What the producer needs from a model provider."""

    def stream(self, request: ChatRequest, system_prompt: str) -> Generator[Delta | Finish, None, None]:
        """Yield the answer as deltas, then one Finish; raise ProviderFailure on failure."""
        ...
