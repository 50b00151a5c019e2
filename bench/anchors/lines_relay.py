"""ANCHOR (not the app; do not deploy): Flask + httpx lines + ``json.loads``, as tutorials write it.

One of the benchmark's anchors (see bench/anchors/__init__.py): the leanest relay a tutorial writes in
Flask. It skips the SDK, reads the upstream's streaming body with httpx, splits it into lines,
parses each ``data:`` line with ``json.loads``, and yields one ``data: {json}`` event per chunk.
Like the baseline it runs under gunicorn's gevent worker (gunicorn.conf.py).

Two departures from the tutorials. A connection pool big enough for thousands of streams (httpx's
default of 100 would queue streams and time them out), as in the baseline. And the tutorials read
``response.iter_lines()``, which splits lines as ``str.splitlines()`` does, so at U+2028, U+0085 and
six more characters that are not line ends in SSE. The fake upstream's answer holds a U+2028, so
that version cuts every stream at its first ``json.loads`` (tried: "Unterminated string"). This
one splits the bytes at LF and carries the unfinished tail, which is also cheaper: if anything, the
anchor is flattered.

Run it by hand::

    python -m fakeupstream --port 8001 &
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake \\
        gunicorn --bind 127.0.0.1:8002 bench.anchors.lines_relay:app
    curl -N localhost:8002/stream -H 'content-type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "hi [fake tokens=5]"}]}'
"""

from __future__ import annotations

import json
import os

import httpx
from flask import Flask, Response, request

app = Flask(__name__)

client = httpx.Client(
    base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8001/v1"),
    headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'no-key-needed')}"},
    timeout=httpx.Timeout(30.0, read=None),
    limits=httpx.Limits(max_connections=10_000, max_keepalive_connections=10_000),
)
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


@app.post("/stream")
def stream() -> Response:
    """Stream the model's answer, one SSE ``data:`` line per chunk, read from the body's lines."""
    messages = request.get_json()["messages"]

    def generate():
        body = {"model": MODEL, "messages": messages, "stream": True}
        with client.stream("POST", "/chat/completions", json=body) as upstream:
            tail = b""
            for piece in upstream.iter_bytes():
                lines = (tail + piece).split(b"\n")
                tail = lines.pop()
                for line in lines:
                    if not line.startswith(b"data: {"):
                        continue  # blank lines, comments, data: [DONE]
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        yield f"data: {json.dumps({'text': chunk['choices'][0]['delta']['content']})}\n\n"
        yield "data: [DONE]\n\n"

    return Response(generate(), mimetype="text/event-stream")
