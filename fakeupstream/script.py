"""The fake upstream's script: how one request is to be answered, read from a ``[fake ...]`` directive.

Where it sits: the server (fakeupstream/server.py) finds the last user message of each chat request
and hands it to ``parse_directive``; the ``Script`` it gets back decides the answer (how many tokens,
how fast, which fault), and ``answer_tokens`` makes the default answer. Tests and the benchmark import
``expected_text`` from here to know, exactly, the text a stream of N tokens must deliver. The command
line parses its defaults with ``parse_value``, so each bound is written once. Pure: no sockets, no gevent.

Try it::

    python -c "from fakeupstream import Script, parse_directive as p; print(p('[fake tokens=3]', Script()))"

The directive keys are listed in the package docstring (fakeupstream/__init__.py). An unknown key,
a bad value, or a key that the chosen fault would silently ignore is a ``DirectiveError`` that names
it: the server answers it with a 400, so a typo in a test fails loudly instead of testing nothing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

from fakeupstream.errors import CONTEXT_DIALECTS, STATUS_ERRORS

# The default answer, token by token. Besides plain words it holds what breaks careless relays: a
# newline, a token that looks like an SSE field once it starts a line ("data: x" right after "\n"),
# multi-byte UTF-8 (2, 3 and 4 bytes), a "\r" (an SSE line ending on its own), U+2028 (a line break only
# to wrong splitters), and markup that must reach the page as text.
WORDS = (
    "Hello",
    ",",
    " world",
    "!",
    "\n",
    "data: x",
    " é",
    " 你好",
    " 🚀",
    " cr\r",
    "\n",
    " </script>",
    " <b>bold</b>",
    " \u2028",
    " the",
    " end",
    ".",
)

FAULTS = (
    "status",
    "context",
    "quota",
    "silent",
    "stall",
    "drop",
    "reset",
    "error_object",
    "no_done",
    "garbage",
    "content_type",
    "null_delta",
)
HTTP_FAULTS = ("status", "context", "quota")  # answered with an HTTP error instead of a stream
AFTER_FAULTS = ("stall", "drop", "reset", "error_object", "no_done", "garbage", "null_delta")
FINISHES = ("stop", "length", "content_filter")
STATUSES = tuple(STATUS_ERRORS)  # what fault=status can send
FLAGS = ("echo", "no_retry")
MAX_TOKENS = 1_000_000

_DIRECTIVE = re.compile(r"\[fake(?:[ \t]+([^\]]*))?\]")


def answer_tokens(tokens: int) -> list[str]:
    """Return the default answer's first ``tokens`` tokens, one string each."""
    return [WORDS[i % len(WORDS)] for i in range(tokens)]


def expected_text(tokens: int) -> str:
    """Return the whole default answer for ``tokens`` tokens."""
    return "".join(answer_tokens(tokens))


@dataclasses.dataclass(frozen=True)
class Script:
    """How one request is answered: the CLI defaults, overridden by the message's directive."""

    tokens: int = 40
    tps: float = 20.0
    ttft: float = 0.3
    think: float = 0.0
    tag: str | None = None
    finish: str = "stop"
    echo: bool = False
    fault: str | None = None
    after: int = 0
    status: int | None = None
    retry_after: float | None = None
    no_retry: bool = False
    dialect: str = "openai"


class DirectiveError(ValueError):
    """A ``[fake ...]`` directive that cannot be obeyed; ``tag`` is kept so the record still has it."""

    def __init__(self, message: str, tag: str | None = None) -> None:
        super().__init__(message)
        self.tag = tag


def _count(text: str) -> int:
    """Parse a token count."""
    value = int(text)
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"must be between 0 and {MAX_TOKENS}")
    return value


def _rate(text: str) -> float:
    """Parse a rate: finite and above zero, or tokens would never come."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a finite number above 0")
    return value


def _seconds(text: str) -> float:
    """Parse a duration in seconds."""
    value = float(text)
    if not (0 <= value <= 3600):
        raise ValueError("must be between 0 and 3600 seconds")
    return value


def _one_of(*choices: str) -> Callable[[str], str]:
    """Return a parser that accepts only the given words."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return text

    return parse


def _status(text: str) -> int:
    """Parse one of the HTTP status codes that fault=status can send."""
    return int(_one_of(*map(str, STATUSES))(text))


_PARSERS = {
    "tokens": _count,
    "tps": _rate,
    "ttft": _seconds,
    "think": _seconds,
    "tag": str,
    "finish": _one_of(*FINISHES),
    "fault": _one_of(*FAULTS),
    "after": _count,
    "status": _status,
    "retry_after": _seconds,
    "dialect": _one_of(*CONTEXT_DIALECTS),
}


def parse_value(key: str, text: str) -> object:
    """Parse the value of the directive key ``key``; a ValueError says which bound it breaks."""
    # The command line (fakeupstream/__main__.py) parses its defaults with these too, so each bound
    # is written once, here.
    return _PARSERS[key](text)


def parse_directive(message: str, defaults: Script) -> tuple[Script, str]:
    """Return the script a user message asks for, and the message without its directive."""
    matches = list(_DIRECTIVE.finditer(message))
    if not matches:
        return defaults, message
    if len(matches) > 1:
        raise DirectiveError(f"only one [fake ...] directive per message, found {len(matches)}")
    match = matches[0]
    values, flags = _split_words(match[1] or "")
    tag = values.get("tag")
    changes: dict[str, object] = {flag: True for flag in flags}
    for key, text in values.items():
        try:
            changes[key] = parse_value(key, text)
        except ValueError as exc:
            raise DirectiveError(f"bad value for {key}: {text!r} ({exc})", tag) from None
    script = dataclasses.replace(defaults, **changes)
    _check_combination(script, values, flags)
    return script, _cut_out(message, match.start(), match.end())


def _split_words(body: str) -> tuple[dict[str, str], set[str]]:
    """Split a directive's body into ``key=value`` pairs and bare flags; refuse unknown names."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    for word in body.split():
        key, sep, value = word.partition("=")
        if key in values or key in flags:
            raise DirectiveError(f"directive key {key!r} given twice", values.get("tag"))
        if sep:
            values[key] = value
        else:
            flags.add(key)
    tag = values.get("tag")
    for key in values:
        if key in FLAGS:
            raise DirectiveError(f"{key!r} is a flag and takes no value", tag)
    for key in flags:
        if key in _PARSERS:
            raise DirectiveError(f"{key!r} needs a value, as in {key}=...", tag)
    unknown = sorted((values.keys() - _PARSERS.keys()) | (flags - set(FLAGS)))
    if unknown:
        known = ", ".join([*_PARSERS, *FLAGS])
        raise DirectiveError(f"unknown directive key {', '.join(map(repr, unknown))} (known: {known})", tag)
    return values, flags


def _check_combination(script: Script, values: dict[str, str], flags: set[str]) -> None:
    """Refuse keys that would be silently ignored with the chosen fault."""
    if script.fault == "status" and script.status is None:
        raise DirectiveError("fault=status needs status=CODE", script.tag)
    if "status" in values and script.fault != "status":
        raise DirectiveError("status=CODE only applies to fault=status", script.tag)
    if "dialect" in values and script.fault != "context":
        raise DirectiveError("dialect=NAME only applies to fault=context", script.tag)
    for key in ("retry_after", "no_retry"):
        if (key in values or key in flags) and script.fault not in HTTP_FAULTS:
            raise DirectiveError(f"{key} only applies to fault={'|'.join(HTTP_FAULTS)}", script.tag)
    if "after" in values and script.fault not in AFTER_FAULTS:
        raise DirectiveError(f"after=N only applies to fault={'|'.join(AFTER_FAULTS)}", script.tag)


def _cut_out(message: str, start: int, end: int) -> str:
    """Remove message[start:end] and one space beside it (the one after, else the one before)."""
    if message[end : end + 1] == " ":
        end += 1
    elif start > 0 and message[start - 1] == " ":
        start -= 1
    return message[:start] + message[end:]
