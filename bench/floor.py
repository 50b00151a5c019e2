"""The floor: what one gevent read and one write per token cost here, before any relay code runs.

    python -m bench.floor                      # 200 streams, 200 tokens at 50/s: about 15 seconds
    python -m bench.floor --streams 50

Why it exists (issue 5): the relay's CPU per token can only fall so far. Whatever a relay does with
a token, under gevent it reads it from one socket and writes it to another, and each costs a wake-up
from the hub and a system call. This measures that cost alone, on this machine, with nothing else:
no HTTP parsing, no SSE, no JSON, no Flask, no gunicorn. If the floor is above a goal, no relay code
can reach the goal on this machine.

Each shape runs in a fresh process pinned to the relay's core, with N greenlets, each streaming one
answer from the fake upstream (a raw HTTP request, the body never parsed: a stream ends when a read
holds ``[DONE]``) to a drain server that reads and discards. The fake upstream and the drain share
the other core. Shapes, from cheapest to the app's own:

- ``recv``: read only;
- ``relay``: read, then ``sendall`` what was read to the drain (the floor of any relay);
- ``hop``: as ``relay``, but a producer greenlet reads and appends to a list and rings a gevent
  Event, and a second greenlet wakes, takes what is new and writes it (the app's producer and
  reader, streamchat/producer.py and streaming.py, without anything else they do).

It prints CPU microseconds per read; under load a read may hold more than one token, so it also
prints reads per token. Bounded: each shape has a deadline; loopback only; children always stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time

from bench.processes import Child, pinned, start_upstream

SHAPES = ("recv", "relay", "hop")
_RECV_SIZE = 65536


def measure(shape: str, upstream_port: int, drain_port: int, streams: int, tokens: int, tps: float) -> dict:
    """Run ``streams`` greenlets of one shape in this process; return reads, tokens and CPU seconds."""
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent
    import gevent.event

    prompt = f"floor [fake tokens={tokens} tps={tps:g} ttft=0.05]"
    body = json.dumps(
        {"model": "floor", "messages": [{"role": "user", "content": prompt}], "stream": True}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer floor\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body)
    )
    reads = 0

    def upstream_reads(up: socket.socket):
        """Yield each read of the upstream's response until the one that holds [DONE]."""
        nonlocal reads
        while True:
            data = up.recv(_RECV_SIZE)
            if not data:
                return
            reads += 1
            yield data
            if b"[DONE]" in data:
                return

    def one() -> None:
        up = socket.create_connection(("127.0.0.1", upstream_port))
        down = socket.create_connection(("127.0.0.1", drain_port))
        try:
            up.sendall(request)
            if shape == "recv":
                for _ in upstream_reads(up):
                    pass
            elif shape == "relay":
                for data in upstream_reads(up):
                    down.sendall(data)
            else:
                hop(up, down)
        finally:
            up.close()
            down.close()

    def hop(up: socket.socket, down: socket.socket) -> None:
        log: list[bytes] = []
        doorbell = gevent.event.Event()
        ended = False

        def produce() -> None:
            nonlocal ended
            for data in upstream_reads(up):
                log.append(data)
                doorbell.set()
            ended = True
            doorbell.set()

        producer = gevent.spawn(produce)
        sent = 0
        while True:
            doorbell.wait()
            doorbell.clear()
            if sent < len(log):
                down.sendall(b"".join(log[sent:]))
                sent = len(log)
            if ended and sent == len(log):
                break
        producer.join()

    deadline = 30 + 3 * tokens / tps
    started = time.process_time()
    greenlets = [gevent.spawn(one) for _ in range(streams)]
    gevent.joinall(greenlets, timeout=deadline, raise_error=True)
    cut = sum(1 for greenlet in greenlets if not greenlet.dead)
    gevent.killall(greenlets)
    return {
        "shape": shape,
        "streams": streams,
        "cut": cut,
        "reads": reads,
        "tokens": streams * tokens,
        "cpu_s": time.process_time() - started,
    }


def drain() -> None:
    """Serve on a free loopback port: read and discard everything; print the port first."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from gevent.server import StreamServer

    def discard(sock, _address) -> None:
        while sock.recv(_RECV_SIZE):
            pass

    server = StreamServer(("127.0.0.1", 0), discard)
    server.start()
    print(server.server_port, flush=True)
    gevent.wait()  # until SIGTERM


def main(argv: list[str] | None = None) -> int:
    """Measure each shape in a fresh, pinned process; print CPU per read and per token."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams (default 200)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per answer (default 200)")
    parser.add_argument("--tps", type=float, default=50.0, help="upstream tokens per second (default 50)")
    parser.add_argument("--measure", choices=SHAPES, help=argparse.SUPPRESS)  # in the child
    parser.add_argument("--drain", action="store_true", help=argparse.SUPPRESS)  # in the child
    parser.add_argument("--ports", help=argparse.SUPPRESS)  # upstream,drain, in the child
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= 5000 or not 1 <= args.tokens <= 1024 or not 0 < args.tps <= 1000:
        parser.error("--streams must be in [1, 5000], --tokens in [1, 1024], --tps in (0, 1000]")
    if args.drain:
        drain()
        return 0
    if args.measure:
        upstream_port, drain_port = map(int, args.ports.split(","))
        result = measure(args.measure, upstream_port, drain_port, args.streams, args.tokens, args.tps)
        print(json.dumps(result), flush=True)
        return 0

    cores = sorted(os.sched_getaffinity(0))
    relay_core = cores[0] if len(cores) >= 2 else None
    if relay_core is not None:
        os.sched_setaffinity(0, set(cores[1:]))  # the upstream and the drain inherit the other cores
    print(
        f"floor: {args.streams} streams, {args.tokens} tokens at {args.tps:g}/s; "
        + (f"shapes on core {relay_core}, upstream and drain on the others" if relay_core is not None else
           "fewer than 2 cores: nothing pinned"),
        flush=True,
    )  # fmt: skip
    children: list[Child] = []
    try:
        upstream, url = start_upstream()
        children.append(upstream)
        drainer = Child("drain", [sys.executable, "-m", "bench.floor", "--drain"], stdout=subprocess.PIPE)
        children.append(drainer)
        ready, _, _ = select.select([drainer.process.stdout], [], [], 15)
        if not ready:
            raise RuntimeError("the drain server did not start in 15 s")
        drain_port = int(drainer.process.stdout.readline())
        ports = f"{url.rsplit(':', 1)[1]},{drain_port}"
        print(f"{'shape':<6} {'streams':>7} {'cut':>4} {'reads':>8} {'reads/token':>11} {'us/read':>8}")
        for shape in SHAPES:
            argv = [sys.executable, "-m", "bench.floor", "--measure", shape, "--ports", ports]
            argv += ["--streams", str(args.streams), "--tokens", str(args.tokens), "--tps", f"{args.tps:g}"]
            run = subprocess.run(
                pinned(argv, relay_core),
                capture_output=True,
                text=True,
                timeout=60 + 3 * args.tokens / args.tps,
            )
            if run.returncode != 0:
                print(run.stdout + run.stderr, file=sys.stderr)
                return 1
            r = json.loads(run.stdout)
            per_read = 1e6 * r["cpu_s"] / r["reads"] if r["reads"] else float("nan")
            print(
                f"{shape:<6} {r['streams']:>7} {r['cut']:>4} {r['reads']:>8}"
                f" {r['reads'] / r['tokens']:>11.2f} {per_read:>8.1f}",
                flush=True,
            )
    finally:
        for child in reversed(children):
            child.stop(signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
