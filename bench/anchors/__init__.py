"""The anchors: three more relays as tutorials write them, measured beside the app when asked for.

The app's performance goals (docs/performance.md) were set against four relays "as tutorials write
them". The first is the baseline every run measures (examples/step1_relay.py); these are the other
three, kept so that the same run, on the same machine, can say whether the app is ahead of each one:

- ``lines``: Flask + httpx, reading the upstream's lines and ``json.loads`` on each (lines_relay.py);
- ``fastapi``: FastAPI + ``AsyncOpenAI`` on uvicorn with uvloop (fastapi_relay.py);
- ``node``: Node's ``http`` + the openai npm package (node/relay.mjs).

None of them is the app, and none is meant to be deployed: they have no heartbeats, no resume, no
stop, no error events. Their departures from the tutorials, each said in its file: a connection
pool big enough for thousands of streams (as the baseline's), no access log (as for every relay
measured), and in the Flask one, lines split on LF only. The Flask one also runs under this
project's gunicorn.conf.py, like the baseline, so it gets the project's tuned garbage collector
thresholds, which a tutorial would not have: that flatters it.

Each speaks the baseline's wire format (``data: {"text": ...}`` per chunk, then ``data: [DONE]``),
so the load generator checks their text exactly as it checks the baseline's.

    pip install -r requirements.txt                  # fastapi, uvicorn, uvloop, httptools, httpx
    npm ci --prefix bench/anchors/node                # the openai npm package (Node.js 20 or later)
    python -m bench.run --relays all --steps 50,200 --soak 0
"""
