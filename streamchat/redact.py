"""Keep secrets and people's words out of the log: redact keys and cut the upstream's own text.

Where it sits: the producer logs why a run failed, in the upstream's own words (streamchat/producer.py),
and an upstream that quotes the request back puts our API key and the user's prompt in that text.
``redact`` cleans such text before it is logged; ``RedactingFilter`` is put on the log handlers by
wsgi.py, so that no line of the service (gunicorn's own included) carries a bearer token, an ``sk-``
key or the configured secrets, whoever wrote it.

Deliberate choices:

- Patterns, not only the configured values: a key quoted back can be another one (a rotated key, the
  key of a proxy in front), so anything shaped like ``sk-...`` or ``Bearer ...`` goes.
- The upstream's text is cut to ``UPSTREAM_TEXT_LIMIT`` characters: enough to diagnose, too little to
  copy a conversation into the log.
- The conversation's own texts are removed from an upstream error when they appear whole in it. A
  prompt quoted in part cannot be recognised; the cut above bounds what could leak that way.

Try it::

    python -c "from streamchat.redact import redact; print(redact('key sk-abc123def456ghi789 is wrong'))"
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

UPSTREAM_TEXT_LIMIT = 500
REDACTED = "[redacted]"
# Secrets shorter than this are not searched for literally: "fake" would blank ordinary words.
MIN_SECRET_CHARS = 8

_PATTERNS = re.compile(
    r"(?i)\bbearer\s+[^\s\"',;]+"  # an Authorization value, whatever the token looks like
    r"|\bsk-[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys (sk-..., sk-proj-...)
)


def redact(text: str, hide: Iterable[str] = (), limit: int | None = None) -> str:
    """Replace key-shaped strings and each of ``hide`` with a marker; cut to ``limit`` characters."""
    for secret in hide:
        if len(secret) >= MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS.sub(REDACTED, text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... [cut at {limit} characters]"
    return text


def upstream_text(text: str, hide: Iterable[str] = ()) -> str:
    """Return an upstream's own words fit for the log: redacted, and cut to the limit."""
    # Redact before cutting, so that a key straddling the cut is not left half visible.
    return redact(text, hide, UPSTREAM_TEXT_LIMIT)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record's message and traceback before it is written."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= MIN_SECRET_CHARS)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place (message with its arguments, and its traceback); keep it."""
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def install(handlers: Iterable[logging.Handler], secrets: Iterable[str] = ()) -> None:
    """Put one RedactingFilter on each handler (once: a second call replaces nothing)."""
    log_filter = RedactingFilter(secrets)
    for handler in handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(log_filter)
