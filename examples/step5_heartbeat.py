"""Step 5: the closed tab and the silent model: read the model in its own greenlet, send heartbeats.

A generator that iterates the model blocks until the next token. While the model thinks, it can
write nothing: a proxy with an idle timeout cuts the silent connection, and a closed tab goes
unnoticed, because only a failed write tells a server that its client has left. Here a producer
greenlet reads the model into a queue, and the response waits on the queue with a timeout:
when nothing came for HEARTBEAT_SECONDS, it writes a comment, ``: ping``. Every reader ignores
it, proxies see a live connection, and if the tab has closed, the write fails, the response is
closed, and its ``finally`` stops the producer, whose ``with`` closes the upstream.

Run it like step 1 (under gevent: the producer is a greenlet)::

    gunicorn -k gevent -w 1 --bind 127.0.0.1:8002 examples.step5_heartbeat:app
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import gevent
import gevent.queue
from flask import Flask, Response, request

from examples.step2_wire_format import answer, encode

app = Flask(__name__)
HEARTBEAT_SECONDS = float(os.environ.get("HEARTBEAT_SECONDS", "5"))
HEARTBEAT = b": ping\n\n"


def produce(messages: list[dict], queue: gevent.queue.Queue) -> None:
    """Put the model's answer into the queue, event by event."""
    for event in answer(messages):
        queue.put(event)


def relay(messages: list[dict]) -> Iterator[bytes]:
    """Yield the answer as SSE frames, and a heartbeat whenever the model is silent."""
    queue = gevent.queue.Queue()
    producer = gevent.spawn(produce, messages, queue)
    try:
        yield HEARTBEAT  # at once: the response head goes out before the model has said a word
        event_id = 0
        while True:
            try:
                event, data = queue.get(timeout=HEARTBEAT_SECONDS)
            except gevent.queue.Empty:
                yield HEARTBEAT  # a write: it keeps proxies patient, and fails if the tab is gone
                continue
            event_id += 1
            yield encode(event, data, event_id)
            if event in ("done", "fail"):
                return
    finally:
        producer.kill()  # the tab closed (or the answer ended): stop reading the model


@app.post("/stream")
def stream() -> Response:
    """Stream the answer to the posted messages."""
    messages = request.get_json()["messages"]
    return Response(relay(messages), mimetype="text/event-stream")
