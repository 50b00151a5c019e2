"""The offline demo model: the default provider, so the project runs on a fresh machine with no account.

It answers deterministically (the same conversation gets the same answer), streams at a realistic,
configurable pace with jitter (DEMO_TOKENS_PER_SECOND, DEMO_FIRST_TOKEN_SECONDS, DEMO_JITTER),
honours max_tokens (finish reason ``length``), and reports usage like an upstream would.

A last user message that starts with ``/demo`` acts out what a real model server does, so each
behaviour can be seen in the page and tested without a network:

=========================  ==================================================================
``/demo echo TEXT``        answers exactly TEXT (newlines, markup and all)
``/demo long N``           answers with N tokens (500 without N)
``/demo markdown``         answers with a heading, a list, a table and a code block in Markdown
``/demo filter``           a few tokens, then finish reason ``content_filter``
``/demo fail CODE``        fails with that ``fail`` code, at the point a real upstream would:
                           auth, bad request, rate limits and outages before the first token;
                           ``first_token_timeout`` by never starting; ``stalled`` by going
                           silent mid-answer; the rest after a few tokens
=========================  ==================================================================

A ``/demo`` command with a typo (``/demo foo``, ``/demo long abc``, ``/demo fail bogus``) is not
quietly taken for something else: the answer is a short message that lists the commands above.

Try it::

    curl -N localhost:8000/stream -H 'content-type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "/demo fail rate_limited"}]}'
"""

from __future__ import annotations

import itertools
import random
import re
import zlib
from collections.abc import Iterator

import gevent

from streamchat.chat_request import ChatRequest
from streamchat.protocol import FAIL_CODES, FailCode
from streamchat.providers.base import Delta, Finish, ProviderFailure

# Failures a real upstream reports before it sends anything (an HTTP status, a refused connection).
_BEFORE_FIRST_TOKEN = {
    FailCode.UPSTREAM_AUTH,
    FailCode.BAD_REQUEST,
    FailCode.CONTEXT_TOO_LONG,
    FailCode.RATE_LIMITED,
    FailCode.QUOTA_EXHAUSTED,
    FailCode.UPSTREAM_UNAVAILABLE,
    FailCode.UPSTREAM_UNREACHABLE,
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

# `/demo markdown`: what models usually answer with, to see the page render it as it streams.
_MARKDOWN = """## Reading a stream in the browser

A `fetch()` reader gets **bytes**, not events: it must carry the *unfinished* line over to the
next chunk. See [MDN on readable streams](https://developer.mozilla.org/en-US/docs/Web/API/Streams_API).

1. Decode with `{stream: true}`, so a character split across chunks survives.
2. Split on line ends, keep the tail.
3. A blank line ends an event.

```python
def lines(chunks):
    tail = ""
    for chunk in chunks:
        *complete, tail = (tail + chunk).split("\\n")
        yield from complete
```

| reader | reconnects | sees heartbeats |
| :--- | :---: | ---: |
| EventSource | by itself | no |
| fetch | by hand | yes |
"""


# `/demo long N`: the words it cycles through, split once.
_WORDS = tuple(" ".join(_PARAGRAPHS).split(" "))


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
        if _is_typo(command, argument):
            command, argument = "help", prompt
        failure = argument.strip() if command == "fail" else None
        if failure in _BEFORE_FIRST_TOKEN:
            gevent.sleep(self._jittered(self.first_token_seconds, pace))
            raise ProviderFailure(failure, retry_after=2.0 if failure == FailCode.RATE_LIMITED else None)

        pieces = _answer_pieces(command, argument, prompt, seed)
        limit = 3 if command in ("fail", "filter") else request.max_tokens
        first_gap = _SILENCE_SECONDS if failure == FailCode.FIRST_TOKEN_TIMEOUT else self.first_token_seconds
        gevent.sleep(self._jittered(first_gap, pace))
        sent = 0
        for piece in itertools.islice(pieces, limit):
            yield Delta(piece)
            sent += 1
            gevent.sleep(self._jittered(self.gap, pace))
        if failure == FailCode.STALLED:
            gevent.sleep(_SILENCE_SECONDS)
        if failure == FailCode.INTERNAL:
            raise RuntimeError("demo: a deliberate bug, to show the 'internal' failure")
        if failure is not None:
            raise ProviderFailure(failure)
        if command == "filter":
            reason = "content_filter"
        else:
            # One piece more than max_tokens is all it takes to know the answer was cut.
            reason = "length" if next(pieces, None) is not None else "stop"
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
    if prompt.strip() == "/demo":
        return "/demo", ""  # the command alone: a typo, answered with the list of commands
    if not prompt.startswith("/demo "):
        return "", ""
    command, _, argument = prompt.removeprefix("/demo ").partition(" ")
    return command, argument


def _is_typo(command: str, argument: str) -> bool:
    """Whether a /demo command is misspelt or has an argument it cannot use."""
    if command in ("", "echo", "filter", "markdown"):
        return False
    if command == "long":
        digits = argument.strip()
        return digits != "" and not (digits.isdigit() and digits.isascii())
    if command == "fail":
        return argument.strip() not in FAIL_CODES
    return True


def _help_text(typed: str) -> str:
    """Return the answer to a misspelt /demo command: what was typed, and the commands."""
    shown = " ".join(typed.replace("`", "").split())[:40]
    return (
        f"`{shown}` is not a demo command. The demo model knows:\n\n"
        "- `/demo echo TEXT`: answers exactly TEXT\n"
        "- `/demo long N`: answers with N tokens\n"
        "- `/demo markdown`: answers with headings, a list, a table and code\n"
        "- `/demo filter`: stops at the content filter\n"
        "- `/demo fail CODE`: fails with a `fail` code, such as `rate_limited` or `stalled`\n\n"
        "Anything else gets an ordinary demo answer."
    )


def _answer_pieces(command: str, argument: str, prompt: str, seed: int) -> Iterator[str]:
    """Yield the answer for a conversation in token-sized pieces (deterministic), as they are sent.

    Lazily, piece by piece: ``/demo long N`` may ask for millions of tokens, and a live stream should
    hold the piece it is sending, not a list of the whole answer (about 227 KB at 4,096 tokens).
    """
    if command == "echo":
        return _pieces(argument)
    if command == "help":
        return _pieces(_help_text(argument))
    if command == "markdown":
        return _pieces(_MARKDOWN)
    if command == "long":
        digits = argument.strip()
        return _long_pieces(int(digits[:9]) if digits != "" else 500)
    topic = " ".join(prompt.split())[:60]
    first = seed % len(_PARAGRAPHS)
    chosen = [_PARAGRAPHS[(first + i) % len(_PARAGRAPHS)] for i in range(2)]
    text = f'You asked: "{topic}". This is the offline demo model.\n\n' + "\n\n".join(chosen)
    return _pieces(text)


def _pieces(text: str) -> Iterator[str]:
    """Yield ``text`` in token-sized pieces, one regex match at a time."""
    return (match.group() for match in _TOKEN.finditer(text))


def _long_pieces(count: int) -> Iterator[str]:
    """Yield ``count`` words of the paragraphs, round and round, a space before all but the first."""
    for i in range(count):
        yield ("" if i == 0 else " ") + _WORDS[i % len(_WORDS)]
