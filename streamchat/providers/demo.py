"""The offline demo model: the default provider, so the project runs on a fresh machine with no account.

It answers deterministically (the same conversation gets the same answer), streams at a realistic,
configurable pace with jitter (DEMO_TOKENS_PER_SECOND, DEMO_FIRST_TOKEN_SECONDS, DEMO_JITTER),
honours max_tokens (finish reason ``length``), and reports usage like an upstream would.

A last user message that starts with ``/demo`` acts out what a real model server does, so each
behaviour can be seen in the page and tested without a network:

=========================  ==================================================================
``/demo echo TEXT``        answers exactly TEXT (newlines, markup and all)
``/demo long N``           answers with N tokens
``/demo filter``           a few tokens, then finish reason ``content_filter``
``/demo fail CODE``        fails with that ``fail`` code, at the point a real upstream would:
                           auth, bad request, rate limits and outages before the first token;
                           ``first_token_timeout`` by never starting; ``stalled`` by going
                           silent mid-answer; the rest after a few tokens
=========================  ==================================================================

Try it::

    curl -N localhost:8000/stream -H 'content-type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "/demo fail rate_limited"}]}'
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterator

import gevent

from streamchat.chat_request import ChatRequest
from streamchat.providers.base import FAIL_CODES, Delta, Finish, ProviderFailure

# Failures a real upstream reports before it sends anything (an HTTP status, a refused connection).
_BEFORE_FIRST_TOKEN = {
    "upstream_auth",
    "bad_request",
    "context_too_long",
    "rate_limited",
    "quota_exhausted",
    "upstream_unavailable",
    "upstream_unreachable",
}
# Long enough to trip any timeout; the producer closes us long before.
_SILENCE_SECONDS = 3600.0
# Text pieces: optional leading white space and up to six visible characters, like subword tokens.
_TOKEN = re.compile(r"\s*\S{1,6}|\s+")

_PARAGRAPHS = (
    "Streaming an answer means sending each piece of text the moment the model produces it, instead "
    "of waiting for the whole reply. The server keeps one HTTP response open and writes small "
    "Server-Sent Events to it: an id, an event name and one line of JSON data, followed by a blank line.",
    "The browser can read that stream two ways. EventSource is built in and reconnects by itself, "
    "sending the last id it saw. A fetch() reader gives full control over the request, but then the "
    "page must parse the bytes itself, carrying any unfinished line over to the next chunk.",
    "Behind the page, each answer is a run: a producer reads tokens from the model and appends numbered "
    "events to a log, and every HTTP response is only a reader of that log. That is what allows "
    "heartbeats while the model is thinking, a stop button that really stops, and resuming after a "
    "dropped connection without paying for the answer twice.",
    "A good relay costs almost nothing per token. It avoids building objects it does not need, writes "
    "several waiting tokens at once when a reader falls behind, and keeps idle streams cheap, so one "
    "process can hold thousands of conversations at the same time.",
)


class DemoProvider:
    """A deterministic, offline stand-in for a chat model."""

    def __init__(self, tokens_per_second: float, first_token_seconds: float, jitter: float) -> None:
        self.gap = 1.0 / tokens_per_second
        self.first_token_seconds = first_token_seconds
        self.jitter = jitter

    def stream(self, request: ChatRequest, system_prompt: str) -> Iterator[Delta | Finish]:
        """Yield the demo answer at the configured pace, acting out /demo commands."""
        prompt = request.messages[-1]["content"]
        seed = zlib.crc32(repr(request.messages).encode("utf-8", "surrogatepass"))
        pace = random.Random(seed)
        command, argument = _demo_command(prompt)
        failure = argument.strip() if command == "fail" else None
        if failure is not None and failure not in FAIL_CODES:
            failure = "bad_request"
        if failure in _BEFORE_FIRST_TOKEN:
            gevent.sleep(self._jittered(self.first_token_seconds, pace))
            raise ProviderFailure(failure, retry_after=2.0 if failure == "rate_limited" else None)

        pieces = _answer_pieces(command, argument, prompt, seed, request.max_tokens + 1)
        limit = 3 if command in ("fail", "filter") else request.max_tokens
        first_gap = _SILENCE_SECONDS if failure == "first_token_timeout" else self.first_token_seconds
        gevent.sleep(self._jittered(first_gap, pace))
        for piece in pieces[:limit]:
            yield Delta(piece)
            gevent.sleep(self._jittered(self.gap, pace))
        if failure == "stalled":
            gevent.sleep(_SILENCE_SECONDS)
        if failure == "internal":
            raise RuntimeError("demo: a deliberate bug, to show the 'internal' failure")
        if failure is not None:
            raise ProviderFailure(failure)
        if command == "filter":
            reason = "content_filter"
        else:
            reason = "length" if len(pieces) > request.max_tokens else "stop"
        sent = min(len(pieces), limit)
        prompt_tokens = sum(len(_TOKEN.findall(m["content"])) for m in request.messages)
        yield Finish(
            reason,
            {"prompt_tokens": prompt_tokens, "completion_tokens": sent, "total_tokens": prompt_tokens + sent},
        )

    def _jittered(self, seconds: float, pace: random.Random) -> float:
        """Spread a delay by +/- the jitter fraction, like a real model's uneven pace."""
        return seconds * pace.uniform(1 - self.jitter, 1 + self.jitter)


def _demo_command(prompt: str) -> tuple[str, str]:
    """Split ``/demo NAME ARGUMENT`` into its name and argument; ("", "") for ordinary prompts."""
    if not prompt.startswith("/demo "):
        return "", ""
    command, _, argument = prompt.removeprefix("/demo ").partition(" ")
    return command, argument


def _answer_pieces(command: str, argument: str, prompt: str, seed: int, most: int) -> list[str]:
    """Return the answer for a conversation in token-sized pieces (deterministic).

    ``/demo long N`` builds at most ``most`` pieces: more could never be sent (max_tokens), and a
    client must not be able to make the worker build a list of a billion strings.
    """
    if command == "echo":
        return _TOKEN.findall(argument)
    if command == "long":
        digits = argument.strip()
        count = min(int(digits[:9]), most) if digits.isdigit() and digits.isascii() else min(500, most)
        words = " ".join(_PARAGRAPHS).split(" ")
        return [("" if i == 0 else " ") + words[i % len(words)] for i in range(count)]
    topic = " ".join(prompt.split())[:60]
    first = seed % len(_PARAGRAPHS)
    chosen = [_PARAGRAPHS[(first + i) % len(_PARAGRAPHS)] for i in range(2)]
    text = f'You asked: "{topic}". This is the offline demo model.\n\n' + "\n\n".join(chosen)
    return _TOKEN.findall(text)
