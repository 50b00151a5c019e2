"""Step 1: a Flask generator that relays the openai SDK's stream as text/event-stream.

This is the relay most tutorials teach, mistakes included, and it is kept that way on purpose: the
tutorial (docs/tutorial.md, step 1) shows each mistake happening, and the benchmark measures the
app against it (``python -m bench.run``). Do not deploy it. Its one departure from the tutorials is
a connection pool big enough for thousands of streams, so the benchmark finds its CPU limit first.

Wire format: one ``data: {"text": ...}`` event per chunk that carries text, then ``data: [DONE]``.

Run it against the fake upstream::

    python -m fakeupstream --port 8001 &
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake \\
        gunicorn -k gevent -w 1 --bind 127.0.0.1:8002 examples.step1_relay:app
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
        try:
            # Mistake: no `with`. When this generator is closed (the client left), nothing closes
            # the SDK's response, and the model goes on generating into an unread connection.
            completion = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
            for chunk in completion:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield f"data: {json.dumps({'text': chunk.choices[0].delta.content})}\n\n"
        except openai.APIError as err:
            # Mistake: the error goes out as answer text. The client cannot tell it from a model
            # that answered "Error: ...".
            yield f"data: {json.dumps({'text': f'Error: {err.message}'})}\n\n"
        yield "data: [DONE]\n\n"

    return Response(generate(), mimetype="text/event-stream")
