"""A fake OpenAI-compatible Chat Completions server, for tests, demos and benchmarks.

Where it sits: in place of ``api.openai.com``. The app's openai provider talks to it exactly as it would
to OpenAI (same paths, same headers, same streaming bytes), so the whole journey browser -> app ->
upstream runs on 127.0.0.1 without an account, and every way an upstream can fail can be produced on
demand, over a real socket. It is a product of its own beside the app (``streamchat/``), which never
imports it; it shares only the HTTP/1.1 framing module, streamchat/http1.py.

Try it::

    python -m fakeupstream --port 8001
    curl -N http://127.0.0.1:8001/v1/chat/completions -H 'Authorization: Bearer fake' \\
        -d '{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi [fake tokens=5]"}]}'
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake gunicorn wsgi:app

Scripting: the last user message may hold one directive, ``[fake key=value flag ...]``; the rest of the
message is ordinary text. An unknown key or fault is a 400 that names it, so a typo fails loudly.

    tokens=N       answer with N tokens of the default text (``expected_text(N)``); CLI --tokens
    tps=F          tokens per second after the first; CLI --tokens-per-second
    ttft=F         seconds before the first token (headers and the role chunk go out at once)
    think=F        seconds of reasoning before that: a chunk with ``reasoning_content`` and no
                   ``content`` every 0.2 s, as vLLM and Ollama stream a reasoning model's thinking
    tag=STR        copied into the request's record, so a test finds its own request
    finish=WHY     stop | length | content_filter (max_tokens below the answer's length gives length)
    echo           answer with the message itself, directive removed, in pieces of 4 characters
    fault=NAME     one of the faults below; after=N sends N tokens first (default 0)
      status       status=CODE (400 401 403 404 409 422 429 500 502 503): an OpenAI error, no stream;
                   429 carries Retry-After (retry_after=S, default 1); no_retry adds x-should-retry: false
      context      a 400 saying the conversation does not fit the model's context window, in the words
                   of one server family: dialect=openai (the default: code context_length_exceeded)
                   | vllm | llamacpp | litellm | ollama, each body as that server sends it
                   (recorded, with their sources, in fakeupstream/errors.py)
      quota        429 insufficient_quota
      silent       role chunk, then nothing until the client leaves (at most 300 s)
      stall        N tokens, then nothing until the client leaves (at most 300 s)
      drop         N tokens, then close (FIN) without the last chunk
      reset        N tokens, then close with an RST (SO_LINGER 0)
      error_object N tokens, then an OpenAI ``{"error": ...}`` frame, and the body ends cleanly
      no_done      N tokens, then the body ends cleanly with no finish chunk and no [DONE]
      garbage      N tokens, then a frame that is not JSON, then the rest as usual
      content_type 200 with Content-Type application/json and a non-stream body
      null_delta   N tokens, then chunks to skip (content null, empty delta, empty choices), then the rest

``GET /_fake/requests`` lists what happened to every chat request (``DELETE`` clears the list), so a
test can check, for example, that the app closed its upstream connection when the user pressed stop.
Each record's ``outcome`` is null while the response runs, then ``completed``, ``client_closed`` (the
client hung up first, whatever the fault), ``fault`` (a scripted fault ended or replaced the stream) or
``error_status`` (any 4xx/5xx answer, scripted or not).

The package, one job per module:

- ``script.py``: the directive parser (``Script``, ``parse_directive``, ``DirectiveError``) and the
  default answer (``expected_text``); pure.
- ``errors.py``: the error bodies it answers with, among them each server family's context error.
- ``frames.py``: the OpenAI chunk JSON, one HTTP chunk per SSE frame; pure.
- ``server.py``: the HTTP server (``FakeUpstream``): connections, requests, faults, records.
- ``ticker.py``: the one greenlet that writes every stream's tokens on schedule.
- ``process.py``: ``FakeUpstreamProcess``, which runs it as a child process for tests and benchmarks.
- ``__main__.py``: the command line, and the only place that monkey-patches.

Importing the package starts nothing, patches nothing and does not import gevent.
"""

from fakeupstream.process import FakeUpstreamProcess
from fakeupstream.script import DirectiveError, Script, expected_text, parse_directive

__all__ = ["DirectiveError", "FakeUpstreamProcess", "Script", "expected_text", "parse_directive"]
