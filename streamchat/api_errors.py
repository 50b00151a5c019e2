"""The API's refusals: a request turned away before any stream starts, as one JSON error body.

Every 4xx and 503 of the API is ``{"error": {"code", "message", "field"?}}``, with Retry-After when
the same request may succeed later. Whoever refuses a request raises ``ApiError`` (the body's
validation in chat_request.py, the guards, the routes, the sign-in); create_app (app.py) turns it
into the response, Flask's own refusals included. Its codes are the protocol's ``HTTP_ERROR_CODES``
(streamchat/protocol.py, docs/protocol.md): a code not listed there is refused at once.

Try it::

    curl -s localhost:8000/runs/nope
"""

from __future__ import annotations

from flask import Response, jsonify

from streamchat.protocol import HTTP_ERROR_CODES


class ApiError(Exception):
    """A request the server refuses before streaming starts: becomes ``{"error": {...}}`` with a 4xx."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after: int | None = None
    ) -> None:
        if code not in HTTP_ERROR_CODES:  # every code is named once, in streamchat/protocol.py
            raise ValueError(f"unknown HTTP error code {code!r}")
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        # Seconds after which the same request may succeed: sent as the Retry-After header (a 429).
        self.retry_after = retry_after

    def body(self) -> dict:
        """Return the JSON error body shared by every 4xx of the API."""
        error = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}

    def headers(self) -> dict[str, str]:
        """Return the headers that go with the error body (Retry-After, when known)."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def response(self) -> tuple[Response, int, dict[str, str]]:
        """Return the Flask response of this refusal: the JSON body, the status, the headers."""
        return jsonify(self.body()), self.status, self.headers()


def store_unavailable() -> ApiError:
    """Return the 503 of a route that needs the run store (or the limits' Redis) while it is down."""
    return ApiError(503, "store_unavailable", "The run store cannot be reached. Try again shortly.")


def body_too_large(limit: int) -> ApiError:
    """Return the 413 of a body over MAX_REQUEST_BYTES, whoever noticed (Flask from its length, or
    the route from what it read), in the words deploy/nginx.conf repeats for nginx's own 413."""
    return ApiError(413, "request_entity_too_large", f"The body must be at most {limit} bytes.")
