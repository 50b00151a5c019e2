"""ANCHOR (not the app; do not deploy): FastAPI + ``AsyncOpenAI`` on uvicorn, as tutorials write it.

One of the benchmark's anchors (see bench/anchors/__init__.py): the asyncio answer to the same question.
A ``StreamingResponse`` iterates the SDK's typed chunks from ``AsyncOpenAI`` and yields one
``data: {json}`` event per chunk. The benchmark runs it under uvicorn with uvloop and httptools,
one process, pinned to the relay's core like the others.

Its one departure from the tutorials: a connection pool big enough for thousands of streams (the
SDK's default stops at 1,000 connections), as in the baseline.

Run it by hand (``pip install -r requirements.txt`` first)::

    python -m fakeupstream --port 8001 &
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake \\
        uvicorn bench.anchors.fastapi_relay:app --port 8002 --loop uvloop --http httptools
    curl -N localhost:8002/stream -H 'content-type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "hi [fake tokens=5]"}]}'
"""

from __future__ import annotations

import json
import os

import httpx2
import openai
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

app = FastAPI()

client = openai.AsyncOpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL"),
    api_key=os.environ.get("OPENAI_API_KEY", "no-key-needed"),
    http_client=openai.DefaultAsyncHttpxClient(
        limits=httpx2.Limits(max_connections=10_000, max_keepalive_connections=10_000)
    ),
)
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


@app.post("/stream")
async def stream(request: Request) -> StreamingResponse:
    """Stream the model's answer, one SSE ``data:`` line per chunk, as the tutorials do."""
    messages = (await request.json())["messages"]

    async def generate():
        completion = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        async for chunk in completion:
            if chunk.choices and chunk.choices[0].delta.content:
                yield f"data: {json.dumps({'text': chunk.choices[0].delta.content})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(generate(), media_type="text/event-stream")
