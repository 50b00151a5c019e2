"""Step 2: the SSE wire format done right: ids, named events, one line of JSON, and `fail`.

The relay of step 1, with every event numbered and named, and an error sent as a ``fail`` event
that no answer can look like. ``read_events`` is the other side, for Python clients: it splits
lines only where SSE does, and carries the unfinished line from one network read to the next.

Run it like step 1 (docs/tutorial.md)::

    gunicorn -k gevent -w 1 --bind 127.0.0.1:8002 examples.step2_wire_format:app
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator

import openai
from flask import Flask, Response, request

app = Flask(__name__)
client = openai.OpenAI(api_key=os.environ.get("OPENAI_API_KEY", "no-key-needed"))
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
LINE_END = re.compile(r"\r\n|\r|\n")  # SSE's three line ends, and no others: not str.splitlines()


def encode(event: str, data: dict, event_id: int) -> bytes:
    """Return one SSE frame: an id, a name, and the data as one line of JSON."""
    # json.dumps escapes LF, CR and (ensure_ascii, its default) U+2028: whatever the model says,
    # the data stays on one line and the frame is plain ASCII.
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode("ascii")


def answer(messages: list[dict]) -> Iterator[tuple[str, dict]]:
    """Yield the model's answer as (event, data) pairs, ending with one ``done`` or ``fail``."""
    reason = None
    try:
        # `with` closes the SDK's response however this generator ends, even when closed early.
        with client.chat.completions.create(model=MODEL, messages=messages, stream=True) as chunks:
            for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield "token", {"text": choice.delta.content}
                    reason = choice.finish_reason or reason
    except openai.APIError as err:
        app.logger.warning("upstream failed: %s", err)  # its details are for the log, not the user
        yield "fail", {"code": "upstream", "message": "The model failed. Try again."}
        return
    yield "done", {"finish_reason": reason}


def relay(messages: list[dict]) -> Iterator[bytes]:
    """Yield the answer as SSE frames, numbered from 1."""
    # closing(): when the relay is closed, so is the answer, and its `with` closes the upstream.
    with contextlib.closing(answer(messages)) as events:
        for event_id, (event, data) in enumerate(events, start=1):
            yield encode(event, data, event_id)


@app.post("/stream")
def stream() -> Response:
    """Stream the answer to the posted messages."""
    messages = request.get_json()["messages"]  # read now: the request is gone once streaming starts
    return Response(relay(messages), mimetype="text/event-stream")


def read_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """Yield (event, data) for each event of an SSE body that arrives in chunks cut anywhere."""
    decoder = codecs.getincrementaldecoder("utf-8")()  # joins a character cut between two chunks
    tail, event, data, cr_last = "", "message", [], False
    for chunk in chunks:
        text = decoder.decode(chunk)
        if text:  # empty when the chunk held only part of a character
            text = text.removeprefix("\n") if cr_last else text  # the LF of a CRLF cut in two
            cr_last = text.endswith("\r")
        *lines, tail = LINE_END.split(tail + text)  # the unfinished line waits for the next chunk
        for line in lines:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if not line:  # a blank line ends the event
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif field == "event":
                event = value
            elif field == "data":
                data.append(value)
