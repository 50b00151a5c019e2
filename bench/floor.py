"""The floor: what one gevent read and one write per token cost here, before any relay code runs.

    python -m bench.floor                      # 200 streams, 200 tokens at 50/s: about 15 seconds
    python -m bench.floor --streams 50

Why it exists: the relay's CPU per token (docs/performance.md) can only fall so far. Whatever a
relay does with a token, under gevent it reads it from one socket and writes it to another, and each
costs a wake-up from the hub and a system call. The first shapes measure that cost alone, on this
machine: no HTTP parsing, no SSE, no JSON, no Flask, no gunicorn. If the floor is above a goal, no
relay code can reach the goal on this machine. The last shape adds the app's own parsing, and shows
how much of the app's cost per token is that code and how much is the server around it.

Each shape runs in a fresh process pinned to the relay's core, with N greenlets, each streaming one
answer from the fake upstream (a raw HTTP request; a stream ends when a read holds ``[DONE]``) to a
drain server that reads and discards. The fake upstream and the drain share the other core.
Shapes, from cheapest to the app's own:

- ``recv``: read only;
- ``relay``: read, then ``sendall`` what was read to the drain (the floor of any relay);
- ``hop``: as ``relay``, but a producer greenlet reads and appends to a list and rings a gevent
  Event, and a second greenlet wakes, takes what is new and writes it (the app's producer and
  reader, streamchat/producer.py and reader.py, without anything else they do);
- ``parse``: as ``hop``, but the producer also does the app's own work on each read: the lean
  transport's chunked decoding (``ChunkedDecoder``, streamchat/http1.py), the provider's SSE and
  JSON reading (``read_answer``), and the ``token`` frame's encoding. What the app does beyond this
  shape is gunicorn, Flask and the WSGI write, the run store, and each stream's set-up (the SDK's
  request).

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

SHAPES = ("recv", "relay", "hop", "parse")
_RECV_SIZE = 65536


def measure(shape: str, upstream_port: int, drain_port: int, streams: int, tokens: int, tps: float) -> dict:
    """Run ``streams`` greenlets of one shape in this process; return reads, tokens and CPU seconds."""
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent
    import gevent.event

    # The app's own per-read code: this measures exactly that code.
    from streamchat.http1 import HEAD_END, ChunkedDecoder
    from streamchat.providers.base import Delta
    from streamchat.providers.openai_compatible import read_answer
    from streamchat.sse import encode_token

    prompt = f"floor [fake tokens={tokens} tps={tps:g} ttft=0.05]"
    body = json.dumps(
        {"model": "floor", "messages": [{"role": "user", "content": prompt}], "stream": True}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer floor\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body)
    )
    reads = written = 0

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

    def send(down: socket.socket, data: bytes) -> None:
        nonlocal written
        down.sendall(data)
        written += len(data)

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
                    send(down, data)
            else:
                hop(up, down, parse=shape == "parse")
        finally:
            up.close()
            down.close()

    def body_pieces(up: socket.socket):
        """Yield the response body's data as it arrives: the head skipped, the chunked coding undone."""
        chunks, buffer, in_head = ChunkedDecoder(), bytearray(), True
        for data in upstream_reads(up):
            buffer += data
            if in_head:
                end = buffer.find(HEAD_END)
                if end < 0:
                    continue
                del buffer[: end + len(HEAD_END)]
                in_head = False
            piece, body_ended = chunks.decode(buffer)
            if piece:
                yield piece
            if body_ended:
                return

    def hop(up: socket.socket, down: socket.socket, *, parse: bool) -> None:
        log: list[bytes] = []
        doorbell = gevent.event.Event()
        ended = False

        def produce() -> None:
            nonlocal ended
            if parse:
                for item in read_answer(body_pieces(up)):
                    if isinstance(item, Delta) and item.text:
                        log.append(encode_token(item.text, item.tokens, len(log) + 1))
                        doorbell.set()
            else:
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
                send(down, b"".join(log[sent:]))
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
        "written": written,
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


def _shapes(text: str) -> list[str]:
    """Parse a comma-separated list of shapes, keeping SHAPES' order."""
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    if not chosen or not chosen <= set(SHAPES):
        raise argparse.ArgumentTypeError(f"expected some of {','.join(SHAPES)}, got {text!r}")
    return [shape for shape in SHAPES if shape in chosen]


def main(argv: list[str] | None = None) -> int:
    """Measure each shape in a fresh, pinned process; print CPU per read and per token."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams (default 200)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per answer (default 200)")
    parser.add_argument("--tps", type=float, default=50.0, help="upstream tokens per second (default 50)")
    parser.add_argument(
        "--shapes",
        type=_shapes,
        default=list(SHAPES),
        help=f"which shapes to run, of {','.join(SHAPES)} (default: all)",
    )
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
        header = ("shape", "streams", "cut", "reads", "reads/token", "KB out", "us/read")
        print(f"{header[0]:<6}", *(f"{name:>{max(len(name), 7)}}" for name in header[1:]))
        for shape in args.shapes:
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
                f"{shape:<6} {r['streams']:>7} {r['cut']:>7} {r['reads']:>7}"
                f" {r['reads'] / r['tokens']:>11.2f} {r['written'] / 1024:>7.1f} {per_read:>7.1f}",
                flush=True,
            )
    finally:
        for child in reversed(children):
            child.stop(signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
