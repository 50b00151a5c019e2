"""THE BASELINE: a token relay written the way tutorials teach it. Not the app; do not deploy it.

``python -m bench.run`` measures the real app side by side with this file, under the same gunicorn
gevent worker, and prints every figure of the app also as a ratio to this one. Ratios hold on a
noisy shared machine where absolute microseconds do not (issue 5).

What makes it "naive", on purpose: the Flask response is a generator that iterates the openai SDK's
typed ``ChatCompletionChunk`` objects and yields one ``data: {json}\\n\\n`` per chunk. So every chunk
builds pydantic objects, every token is one ``json.dumps`` and one socket write, and nothing is
shared between streams. It has no heartbeats, no resume, no stop, no error events: a generator that
blocks on the upstream cannot do those (see streamchat/producer.py for why the app is built
differently).

Its one departure from the tutorials: a connection pool big enough for thousands of streams (the
SDK's default stops at 1,000 connections), so that the baseline is limited by CPU, like the app.

Wire format, one event per upstream chunk that carries text, then a terminator::

    data: {"text": "Hello"}

    data: [DONE]

Run it by hand::

    python -m streamchat.fake_upstream --port 8001 &
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake \\
        gunicorn -k gevent -w 1 --no-control-socket --bind 127.0.0.1:8002 bench.naive_relay:app
    curl -N localhost:8002/stream -H 'content-type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "hi [fake tokens=5]"}]}'
"""

from __future__ import annotations

import json
import os

import httpx2
import openai
from flask import Flask, Response, request

app = Flask(__name__)

client = openai.OpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL"),
    api_key=os.environ.get("OPENAI_API_KEY", "no-key-needed"),
    http_client=openai.DefaultHttpxClient(
        limits=httpx2.Limits(max_connections=10_000, max_keepalive_connections=10_000)
    ),
)
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


@app.post("/stream")
def stream() -> Response:
    """Stream the model's answer, one SSE ``data:`` line per chunk, as the tutorials do."""
    messages = request.get_json()["messages"]

    def generate():
        completion = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        for chunk in completion:
            if chunk.choices and chunk.choices[0].delta.content:
                yield f"data: {json.dumps({'text': chunk.choices[0].delta.content})}\n\n"
        yield "data: [DONE]\n\n"

    return Response(generate(), mimetype="text/event-stream")
