"""Validate a chat request body before any streaming starts (and the sign-in body of POST /session).

A request's journey: the view reads the JSON body, ``parse_chat_request`` turns it into a plain
``ChatRequest`` or raises ``ApiError``, and only then does a run start. Bad input is therefore
always a JSON 4xx naming the field, never a half-open stream and never a 500.

pydantic does the shape checks (types, unknown keys, roles); the limits that depend on server
settings (message count and size, max_tokens, the model allow-list) are checked here afterwards so
each error can say what the limit is. Nothing is silently clamped: a value past a limit is a 400.

Try it::

    curl -s localhost:8000/stream -H 'content-type: application/json' -d '{"messages": []}'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from streamchat.api_errors import ApiError
from streamchat.config import Settings

TEMPERATURE_RANGE = (0.0, 2.0)


@dataclass(frozen=True)
class ChatRequest:
    """A validated request: plain values that the producer can use without touching Flask."""

    messages: tuple[dict[str, str], ...]
    model: str
    max_tokens: int
    temperature: float | None


class ChatMessage(BaseModel):
    """One message of the conversation (the system prompt is the server's, never the client's)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "assistant"]
    content: str


class ChatBody(BaseModel):
    """The body of ``POST /stream`` and ``POST /runs`` (also the OpenAPI document's schema of it)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


class SessionBody(BaseModel):
    """The body of ``POST /session``: the access token, exchanged for the session cookie."""

    model_config = ConfigDict(extra="forbid", strict=True)
    token: str


BodyModel = TypeVar("BodyModel", bound=BaseModel)


def parse_chat_request(body: object, settings: Settings) -> ChatRequest:
    """Check a decoded JSON body against the schema and the server's limits."""
    parsed = _validate(ChatBody, body)
    _check_limits(parsed, settings)
    return ChatRequest(
        messages=tuple({"role": m.role, "content": m.content} for m in parsed.messages),
        model=parsed.model or settings.default_model,
        max_tokens=parsed.max_tokens or settings.default_max_tokens,
        temperature=parsed.temperature,
    )


def parse_session_request(body: object) -> str:
    """Check a decoded ``POST /session`` body; return the token it holds."""
    return _validate(SessionBody, body).token


def _validate(model: type[BodyModel], body: object) -> BodyModel:
    """Validate a decoded JSON body against ``model``; a refusal names its first error's field."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "The body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise _first_error(err) from None


def _check_limits(parsed: ChatBody, settings: Settings) -> None:
    """Refuse values past the server's limits, naming the field and the limit."""
    messages = parsed.messages
    if not messages:
        raise ApiError(400, "invalid_field", "messages must hold at least one message.", "messages")
    if len(messages) > settings.max_messages:
        raise ApiError(
            400, "too_many_messages", f"At most {settings.max_messages} messages are allowed.", "messages"
        )
    for index, message in enumerate(messages):
        if not _is_encodable(message.content):
            raise ApiError(
                400,
                "invalid_field",
                "content holds a lone surrogate (\\ud800-\\udfff), which is not valid text.",
                f"messages.{index}.content",
            )
        if len(message.content) > settings.max_message_chars:
            raise ApiError(
                400,
                "message_too_long",
                f"A message may hold at most {settings.max_message_chars} characters.",
                f"messages.{index}.content",
            )
    if messages[-1].role != "user" or not messages[-1].content.strip():
        raise ApiError(400, "invalid_field", "The last message must be a non-empty user message.", "messages")
    if parsed.model is not None and parsed.model not in settings.models:
        raise ApiError(400, "unknown_model", f"model must be one of {', '.join(settings.models)}.", "model")
    if parsed.max_tokens is not None and not 1 <= parsed.max_tokens <= settings.max_tokens_limit:
        raise ApiError(
            400,
            "invalid_field",
            f"max_tokens must be between 1 and {settings.max_tokens_limit}.",
            "max_tokens",
        )
    low, high = TEMPERATURE_RANGE
    if parsed.temperature is not None and not low <= parsed.temperature <= high:
        raise ApiError(
            400, "invalid_field", f"temperature must be between {low:g} and {high:g}.", "temperature"
        )


def _is_encodable(text: str) -> bool:
    """Tell whether text is valid Unicode (JSON allows lone surrogates; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_error(err: ValidationError) -> ApiError:
    """Turn pydantic's first complaint into one clear message that names the field."""
    problem = err.errors()[0]
    field = ".".join(str(part) for part in problem["loc"]) or None
    kind = problem["type"]
    if kind == "extra_forbidden":
        return ApiError(400, "unknown_field", f"Unknown field {field!r}.", field)
    if kind == "missing":
        return ApiError(400, "missing_field", f"Field {field!r} is required.", field)
    if kind == "literal_error" and field and field.endswith(".role"):
        return ApiError(
            400,
            "invalid_field",
            f"role must be 'user' or 'assistant', got {problem.get('input')!r} "
            "(the system prompt is set by the server).",
            field,
        )
    return ApiError(400, "invalid_field", f"{field}: {problem['msg']}.", field)
