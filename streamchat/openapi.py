"""``GET /openapi.json``: the API described as OpenAPI 3.1, its schemas generated from pydantic models.

Why generated: the request bodies' schemas come from the very models the routes validate with
(``ChatBody`` and ``SessionBody`` in streamchat/chat_request.py), so the document cannot drift from
what the server accepts. The response bodies have models here, beside the paths that use them; a
test runs schemathesis against a running server and checks every answer against this document
(tests/test_openapi.py).

What it does not say: the limits that depend on settings (message count and size, max_tokens, the
model allow-list) are checked after the shape, and a request past one gets a 400 that names it; the
SSE body is described in docs/protocol.md, not as a schema.

Try it::

    curl -s localhost:8000/openapi.json | python -m json.tool | head -30
"""

from __future__ import annotations

import functools
from typing import Literal

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from streamchat.chat_request import ChatBody, SessionBody
from streamchat.protocol import EVENT_NAMES, RUN_STATES
from streamchat.session import COOKIE_NAME

bp = Blueprint("openapi", __name__)

RunState = Literal[RUN_STATES]  # type: ignore[valid-type]


class ErrorDetail(BaseModel):
    """What went wrong: a code from docs/protocol.md, a message for people, maybe the field."""

    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The body of every refusal (4xx, 503): ``{"error": {...}}``."""

    error: ErrorDetail


class RunCreated(BaseModel):
    """The answer to ``POST /runs``: the run's id and where to read and stop it."""

    id: str
    stream_url: str
    stop_url: str


class RunStatusBody(BaseModel):
    """A run's state, as ``GET /runs/<id>`` and ``POST /runs/<id>/stop`` report it."""

    id: str
    model: str
    state: RunState
    last_event_id: int
    finish_reason: str | None = None
    code: str | None = None


class Health(BaseModel):
    """``GET /healthz``: whether this worker can serve runs, and which run store it uses."""

    status: Literal["ok", "unavailable"]
    store: Literal["memory", "redis"]
    message: str | None = None


_REQUEST_MODELS = (ChatBody, SessionBody)
_RESPONSE_MODELS = (ErrorBody, RunCreated, RunStatusBody, Health)


def _schemas() -> dict:
    """Return the components' schemas: request models as validated, response models as written."""
    pairs = [(m, "validation") for m in _REQUEST_MODELS] + [(m, "serialization") for m in _RESPONSE_MODELS]
    _, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    return top["$defs"]


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


# One Server-Sent Event (each event's data is a JSON object, docs/protocol.md); the retry hint and the
# heartbeat comments carry no event.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"enum": list(EVENT_NAMES)},
        "data": {"type": "string"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer"},
    },
}
_SSE = {
    "description": "The run's events as Server-Sent Events (docs/protocol.md)",
    "content": {"text/event-stream": {"schema": _SSE_EVENT}},
}
_HTML = {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
_OPENAPI = {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}
_REFUSED = _json(ErrorBody, "Refused before anything started; the code says why (docs/protocol.md)")
_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
_CHAT_BODY = {"required": True, "content": {"application/json": {"schema": _ref(ChatBody)}}}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}


def _operation(summary: str, responses: dict, **extra: object) -> dict:
    """One operation: every answer it documents, and the error body for any other status."""
    return {"summary": summary, "responses": {**responses, "default": _REFUSED}, **extra}


def _paths() -> dict:
    too_many = {**_REFUSED, "headers": _RETRY_AFTER}
    started = {"429": too_many}
    return {
        "/": {"get": _operation("The chat page", {"200": _HTML})},
        "/healthz": {
            "get": _operation(
                "Whether this worker can serve runs",
                {"200": _json(Health, "Serving"), "503": _json(Health, "The run store cannot be reached")},
            )
        },
        "/openapi.json": {"get": _operation("This document", {"200": _OPENAPI})},
        "/metrics": {
            "get": _operation(
                "Prometheus metrics, to loopback clients or a client with the access token",
                {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/session": {
            "post": _operation(
                "Sign in: exchange the access token for the session cookie",
                {"204": {"description": "Signed in (or no token is needed)"}, "429": too_many},
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref(SessionBody)}},
                },
            ),
            "delete": _operation(
                "Sign out: clear the session cookie", {"204": {"description": "Signed out"}}
            ),
        },
        "/stream": {
            "post": _operation(
                "Start a run and stream it in this response", {"200": _SSE, **started}, requestBody=_CHAT_BODY
            )
        },
        "/runs": {
            "post": _operation(
                "Start a run; read it from stream_url",
                {
                    "201": {
                        **_json(RunCreated, "Started"),
                        "headers": {
                            "Location": {"description": "The run's status URL", "schema": {"type": "string"}}
                        },
                    },
                    **started,
                },
                requestBody=_CHAT_BODY,
            )
        },
        "/runs/{run_id}": {
            "get": _operation("A run's state", {"200": _json(RunStatusBody, "The run")}, parameters=[_RUN_ID])
        },
        "/runs/{run_id}/stream": {
            "get": _operation(
                "A run's events, from the start or after Last-Event-ID",
                {"200": _SSE, "204": {"description": "Nothing left to send, or the run is unknown"}},
                parameters=[
                    _RUN_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    {"name": "last_event_id", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
            )
        },
        "/runs/{run_id}/stop": {
            "post": _operation(
                "Stop a run",
                {"202": _json(RunStatusBody, "Stopping"), "200": _json(RunStatusBody, "Already finished")},
                parameters=[_RUN_ID],
            )
        },
    }


@functools.cache  # the same for every request: it depends on no setting
def openapi_document() -> dict:
    """Return the OpenAPI 3.1 document of the whole API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamchat",
            "version": "1",
            "description": "Stream LLM answers as Server-Sent Events.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": COOKIE_NAME},
            },
        },
    }


@bp.get("/openapi.json")
def document() -> Response:
    """Serve the OpenAPI document."""
    return jsonify(openapi_document())
