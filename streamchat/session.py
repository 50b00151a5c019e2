"""Signing in with ACCESS_TOKEN: the session cookie, and the two routes that set and clear it.

Why a cookie at all: ``EventSource`` cannot send an ``Authorization`` header, so a page that reads
runs with it needs the browser to carry its credential. ``POST /session`` with the token answers 204
and sets the cookie; ``DELETE /session`` clears it. curl and scripts send ``Authorization: Bearer``.

Where it sits: the request guards (streamchat/guards.py) ask ``has_credentials`` before any API route
runs; they also refuse a client that failed to sign in too often (SESSION_RATE_LIMIT), before it can
try again, and count each failure (a 401 from ``POST /session``).

Deliberate choices:

- The cookie's value is an HMAC of a fixed label keyed with the token. Every worker and every host
  can check it with nothing shared but ACCESS_TOKEN, nothing needs storing, and changing the token
  signs everyone out. It reveals nothing about the token.
- Every comparison is made in constant time (``hmac.compare_digest``), so that the time an answer
  takes says nothing about how much of a guess was right.
- ``HttpOnly`` (no script can read it), ``SameSite=Strict`` (no other site's page can make the
  browser send it), ``Path=/``, and ``Secure`` when the request came over HTTPS (as the proxy says,
  with PROXY_HOPS).

Try it::

    curl -i localhost:8000/session -H 'content-type: application/json' -d '{"token": "..."}'
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Blueprint, Request, Response, current_app, request

from streamchat.api_errors import ApiError
from streamchat.chat_request import parse_session_request

bp = Blueprint("session", __name__)

COOKIE_NAME = "streamchat_session"
# A signed-in browser stays signed in for this long, or until ACCESS_TOKEN changes.
COOKIE_MAX_AGE_SECONDS = 30 * 86_400
_COOKIE_LABEL = b"streamchat session cookie v1"


def cookie_value(token: str) -> str:
    """Return the session cookie's value for ``token`` (an HMAC: it cannot be turned back into it)."""
    return hmac.new(token.encode(), _COOKIE_LABEL, hashlib.sha256).hexdigest()


def has_credentials(req: Request, token: str) -> bool:
    """Tell whether the request carries ``Authorization: Bearer <token>`` or the session cookie."""
    header = req.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if header and scheme.lower() == "bearer" and _same(given.strip(), token):
        return True
    cookie = req.cookies.get(COOKIE_NAME)
    return cookie is not None and _same(cookie, cookie_value(token))


def _same(given: str, expected: str) -> bool:
    """Compare in constant time (for strings of the same length: the length itself is no secret)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _token() -> str:
    return current_app.extensions["streamchat"].settings.access_token


@bp.post("/session")
def sign_in() -> Response:
    """Exchange the access token for the session cookie (204), or answer 401."""
    given = parse_session_request(request.get_json(silent=True))
    token = _token()
    response = Response(status=204)
    if not token:
        return response  # nothing to sign in to: every route is open
    if not _same(given, token):
        raise ApiError(401, "unauthorized", "That access token is not right.")
    response.set_cookie(
        COOKIE_NAME,
        cookie_value(token),
        max_age=COOKIE_MAX_AGE_SECONDS,
        path="/",
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@bp.delete("/session")
def sign_out() -> Response:
    """Clear the session cookie (204), signed in or not."""
    response = Response(status=204)
    response.delete_cookie(COOKIE_NAME, path="/", secure=request.is_secure, httponly=True, samesite="Strict")
    return response
