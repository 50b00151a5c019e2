"""Step 4: EventSource, in two steps: POST the prompt, then GET the stream by the run's id.

EventSource can only GET, so a prompt would have to go into the URL, and URLs are written to
every access log on the way. Here ``POST /runs`` keeps the messages under a random id, and the
page's EventSource GETs ``/runs/<id>/stream``. When a stream ends, EventSource reconnects by
itself, sending the last id it saw as ``Last-Event-ID``; ``204`` is the one answer that stops it.
This step has nothing to resume from yet (step 6 keeps a log), so a stream is served once.

Run it like step 1 and open http://127.0.0.1:8002/::

    gunicorn -k gevent -w 1 --bind 127.0.0.1:8002 examples.step4_eventsource:app
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

from flask import Flask, Response, request

from examples.step2_wire_format import relay

app = Flask(__name__)
runs: dict[str, list[dict]] = {}  # run id -> messages, until its stream is read
RETRY = b"retry: 500\n\n"  # how long EventSource waits before it reconnects (its default: 3 s)

PAGE = """<!doctype html><meta charset="utf-8"><title>Step 4</title>
<form><input name="q" aria-label="Message"><button>Ask</button></form><p id="answer"></p>
<script type="module">
document.querySelector('form').addEventListener('submit', async (submit) => {
  submit.preventDefault();
  const answer = document.querySelector('#answer');
  const content = new FormData(submit.target).get('q');
  // Step one: POST the prompt. Step two: GET the stream of the run it created.
  const response = await fetch('/runs', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content }] }) });
  const source = new EventSource((await response.json()).stream_url);
  answer.textContent = '';
  source.addEventListener('token', (e) => { answer.textContent += JSON.parse(e.data).text; });
  for (const end of ['done', 'fail']) {
    // Close on the last event: else, when the response ends, EventSource asks again.
    source.addEventListener(end, () => { source.close(); answer.dataset.state = end; });
  }
});
</script>"""


@app.get("/")
def page() -> str:
    """Serve the page."""
    return PAGE


@app.post("/runs")
def create_run() -> tuple[dict, int]:
    """Keep the messages under a new run id, and say where to read the answer."""
    run_id = secrets.token_urlsafe(12)
    runs[run_id] = request.get_json()["messages"]
    return {"id": run_id, "stream_url": f"/runs/{run_id}/stream"}, 201


@app.get("/runs/<run_id>/stream")
def run_stream(run_id: str) -> Response:
    """Stream the run's answer once; answer any later request (a reconnect) with 204."""
    messages = runs.pop(run_id, None)
    if messages is None:
        return Response(status=204)  # unknown, or already streamed: EventSource stops for good
    return Response(with_retry(relay(messages)), mimetype="text/event-stream")


def with_retry(frames: Iterator[bytes]) -> Iterator[bytes]:
    """Send the reconnect delay first, then the frames."""
    yield RETRY
    yield from frames  # closing this closes the relay too


@app.get("/ask")
def ask() -> Response:
    """The mistake, kept to show it: a GET with the prompt in the URL, for EventSource."""
    messages = [{"role": "user", "content": request.args["q"]}]
    return Response(with_retry(relay(messages)), mimetype="text/event-stream")
