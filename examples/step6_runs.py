"""Step 6: runs. A producer fills a numbered log; each response only reads it, from any event id.

So a dropped connection resumes where it stopped, and the model is never called twice; Stop
kills the producer; and a run that nobody reads for GRACE_SECONDS is stopped: a closed tab stops
the model, yet a reconnect has time to come back. Run it like step 1, then try docs/tutorial.md::

    gunicorn -k gevent -w 1 --bind 127.0.0.1:8002 examples.step6_runs:app
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import gevent
import gevent.event
from flask import Flask, Response, abort, request

from examples.step2_wire_format import answer, encode
from examples.step5_heartbeat import HEARTBEAT, HEARTBEAT_SECONDS

app = Flask(__name__)
GRACE_SECONDS = float(os.environ.get("GRACE_SECONDS", "10"))
runs: dict[str, Run] = {}  # never forgotten here; streamchat/runs/ forgets finished runs


class Run:
    """One answer: its log of (event, data), the producer that fills it, and its readers."""

    def __init__(self, messages: list[dict]) -> None:
        self.log: list[tuple[str, dict]] = []  # event N is self.log[N - 1]
        self.grew = gevent.event.Event()  # set, then replaced, at each append: wakes every reader
        self.readers = self.left = 0  # readers now; readers that have left so far
        self.producer = gevent.spawn(self.produce, messages)
        gevent.spawn_later(GRACE_SECONDS, self.stop_if_unread, 0)  # nobody may ever come to read

    def produce(self, messages: list[dict]) -> None:
        """Append the model's answer to the log, whoever is reading."""
        for event in answer(messages):
            self.append(event)

    @property
    def ended(self) -> bool:
        """Tell whether the log holds its last event."""
        return bool(self.log) and self.log[-1][0] in ("done", "fail")

    def append(self, event: tuple[str, dict]) -> None:
        """Add an event to the log and wake the readers."""
        self.log.append(event)
        self.grew, grew = gevent.event.Event(), self.grew
        grew.set()

    def read(self, after_id: int) -> Iterator[bytes]:
        """Yield the events after ``after_id``, live, until the last; heartbeats in between."""
        self.readers += 1
        try:
            while True:
                grew = self.grew  # taken before sending, so an append meanwhile is not missed
                while after_id < len(self.log):
                    after_id += 1
                    yield encode(*self.log[after_id - 1], after_id)
                if self.ended:
                    return
                if not grew.wait(HEARTBEAT_SECONDS):
                    yield HEARTBEAT
        finally:
            self.readers -= 1
            self.left += 1
            gevent.spawn_later(GRACE_SECONDS, self.stop_if_unread, self.left)

    def stop(self) -> None:
        """Kill the producer (its `with` closes the upstream) and end the log with ``stopped``."""
        self.producer.kill()
        if not self.ended:
            self.append(("done", {"finish_reason": "stopped"}))

    def stop_if_unread(self, left: int) -> None:
        """Stop the run if nobody has read it since the reader number ``left`` left."""
        if self.readers == 0 and self.left == left:
            self.stop()


@app.post("/runs")
def create_run() -> tuple[dict, int]:
    """Start a run and say where to read it and how to stop it."""
    run_id = secrets.token_urlsafe(12)
    runs[run_id] = Run(request.get_json()["messages"])
    return {"id": run_id, "stream_url": f"/runs/{run_id}/stream", "stop_url": f"/runs/{run_id}/stop"}, 201


@app.get("/runs/<run_id>/stream")
def run_stream(run_id: str) -> Response:
    """Stream the run's events after Last-Event-ID; 204 when nothing is left to send."""
    run, after_id = runs.get(run_id), request.headers.get("Last-Event-ID", 0, type=int)
    if run is None or (run.ended and after_id >= len(run.log)):
        return Response(status=204)
    return Response(run.read(after_id), mimetype="text/event-stream")


@app.post("/runs/<run_id>/stop")
def stop_run(run_id: str) -> tuple[dict, int]:
    """Stop the run; its readers get ``done`` with ``stopped``."""
    if run_id not in runs:
        abort(404)
    runs[run_id].stop()
    return {"id": run_id}, 202
