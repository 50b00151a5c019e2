"""The headers that tell a browser what this service's pages may do: CSP, nosniff, no referrer.

Where it sits: create_app (app.py) adds them to every response, the page, its static files, JSON
errors and event streams alike, through ``add_security_headers``.

Why each one:

- ``Content-Security-Policy``: ``default-src 'none'``, then exactly what the page uses: its own
  scripts and styles (no inline script or style, no import map: templates/index.html has none),
  ``connect-src 'self'`` for fetch and EventSource, ``img-src 'self'`` for its own images (the
  favicon). ``frame-ancestors 'none'`` (no other site may frame it), ``base-uri 'none'``,
  ``form-action 'self'``. Model text reaches the page as text, or as Markdown rendered by marked
  and sanitized by DOMPurify (static/js/markdown.js); this is the second line of defence if that
  ever slips.
- ``X-Content-Type-Options: nosniff``: a JSON or SSE body is never run as script or read as HTML.
- ``Referrer-Policy: no-referrer``: run ids in URLs never travel to another site.

Try it::

    curl -sI localhost:8000/ | grep -i -e content-security -e nosniff -e referrer
"""

from __future__ import annotations

from flask import Response

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_security_headers(response: Response) -> Response:
    """Set the browser-hardening headers on a response (an ``after_request`` function)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
