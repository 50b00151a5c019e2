"""Serve the fake upstream: ``python -m fakeupstream --port 8001``.

Where it sits: the command line of the fake OpenAI-compatible server (what it serves and the
directives it obeys are in fakeupstream/__init__.py). Tests and the benchmark start it as a child
process (fakeupstream/process.py); people start it by hand to run the app without an account::

    python -m fakeupstream --port 8001 &
    OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake gunicorn wsgi:app

It prints one line, ``fake upstream listening on http://HOST:PORT/v1``, once it accepts connections
(``--port 0`` picks a free port, and that line says which), and runs until SIGINT or SIGTERM.

Deliberate choices:

- ``monkey.patch_all()`` runs only here, when the module runs as the program: tests import the
  package unpatched (for ``expected_text`` and ``FakeUpstreamProcess``) and start the server as a
  child process.
- It refuses to listen on a non-loopback address unless told to: it accepts any API key.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from fakeupstream.script import Script, parse_value
from fakeupstream.server import FakeUpstream


def _is_loopback(host: str) -> bool:
    """Tell whether a host name or address stays on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _like(key: str) -> Callable[[str], object]:
    """Return an argparse type that parses a value as the directive key ``key`` does, bounds included."""

    def parse(text: str) -> object:
        try:
            return parse_value(key, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad value {text!r} ({exc})") from None

    return parse


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read and check the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m fakeupstream",
        description="Serve a fake OpenAI-compatible streaming Chat Completions API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    # Each default is what a directive may override (fakeupstream/script.py), checked by the same rules.
    parser.add_argument("--tokens", type=_like("tokens"), default=40, help="tokens per answer")
    parser.add_argument("--tokens-per-second", type=_like("tps"), default=20.0)
    parser.add_argument("--first-token-seconds", type=_like("ttft"), default=0.3)
    parser.add_argument("--model", default="fake-model", help="the model listed by GET /v1/models")
    parser.add_argument(
        "--allow-non-loopback", action="store_true", help="listen beyond 127.0.0.1 (it accepts any key)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; return the exit code."""
    args = _parse_args(argv)
    if not args.allow_non_loopback and not _is_loopback(args.host):
        print(
            f"fake upstream: refusing to listen on {args.host!r}, not a loopback address "
            "(pass --allow-non-loopback if you really mean it)",
            file=sys.stderr,
        )
        return 2
    defaults = Script(tokens=args.tokens, tps=args.tokens_per_second, ttft=args.first_token_seconds)
    upstream = FakeUpstream(defaults, args.model)
    server = StreamServer((args.host, args.port), upstream.handle, backlog=1024)
    server.start()
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fake upstream listening on http://{host}:{server.server_port}/v1", flush=True)
    stop = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    server.stop()  # stop accepting; streams still open (a held stall, say) end with the process
    return 0


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    sys.exit(main())
