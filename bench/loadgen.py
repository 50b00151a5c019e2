"""The load generator: N concurrent SSE streams over raw sockets, each checked for exact text.

Where it sits: ``python -m bench.run`` starts it once per measured phase, in its own process,
pinned to the harness core beside the fake upstream; the relay under test has the other core. It
writes one JSON summary and exits. It can also be run by hand against a running relay::

    python -m bench.loadgen --url http://127.0.0.1:8000 --mode app --streams 50 --tokens 200 --tps 50

Each of ``--streams`` clients runs ``--rounds`` streams back to back, the clients starting evenly
over ``--ramp`` seconds: with a ramp of one stream's length and two rounds, the relay holds N open
streams in a steady state, new ones arriving at an even pace as old ones end, as real users do.
The start-cost step (bench/start_cost.py) runs many rounds of one-token answers from a few clients
(``--tokens 1 --tps 1000 --ttft 0``), and a burst of one round each over a short ramp.

Modes: ``app`` reads this project's SSE (``id``/``event: token``/``done``), ``naive`` reads the
baseline's ``data: {"text": ...}`` lines ending with ``data: [DONE]`` (examples/step1_relay.py, and the
anchors in bench/anchors/, which speak the same), and ``direct`` reads the fake upstream's own
Chat Completions chunks, which is how the run measures the upstream's own time to first token and
gaps at the same concurrency.

Deliberate choices, so that the harness costs little and is never the bottleneck unnoticed:

- One ``epoll`` loop over non-blocking sockets, no greenlets, no HTTP or SSE library. A first
  version with one gevent greenlet per stream spent 45-65 us of CPU per token on this kind of
  machine, mostly in the hub's wake-ups: as much as the relay it measures. The loop is a fraction.
- Minimal parsing while tokens arrive: de-chunk (with streamchat/http1.py, the framing module the
  app's transport uses too), split frames on a blank line, keep each token's raw ``data`` bytes and
  the clock reading of its ``recv``. The JSON is decoded once per stream, at the end, to compare
  the text with ``expected_text(n)`` exactly.
- Its own CPU, and that of the processes given with ``--watch NAME=PID``, are read from /proc over
  the measured window, so the report can say when the harness itself was saturated.
- Bounded: a hard ``--deadline`` after which every stream still open is cut and reported as cut.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import socket
import sys
import time
from array import array
from collections import Counter
from urllib.parse import urlsplit

from bench.procfs import cpu_seconds, rss_kb
from fakeupstream import expected_text
from streamchat.http1 import ChunkedDecoder, parse_response_head, response_framing, take_head

MODES = ("app", "naive", "direct")
_RECV_SIZE = 65536
MAX_ROUNDS = 1000  # --rounds: streams each client runs back to back
MAX_TOTAL_STREAMS = 100_000  # --streams times --rounds: what one phase keeps in memory
_SAMPLE_SECONDS = 0.2  # how often the open-stream count and the watched RSS and CPU are sampled


# --- one stream -----------------------------------------------------------------------------------------


class Stream:
    """One request and what arrived on it: clock readings, raw token payloads, and how it ended."""

    __slots__ = (
        "chunked",
        "data",
        "decoder",
        "done_data",
        "dup_ids",
        "ended",
        "error",
        "fail_data",
        "head",
        "last_id",
        "lost_ids",
        "mode",
        "opened",
        "outcome",
        "pings",
        "sent",
        "raw",
        "sse",
        "started",
        "status",
        "terminal",
        "times",
    )

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.started = 0.0  # before connect
        self.sent = 0.0  # the request is out: from here the relay holds the stream
        self.opened = 0.0  # response head received
        self.ended = 0.0
        self.head = bytearray()
        self.status = 0
        self.chunked = False
        self.decoder = ChunkedDecoder()
        self.raw = bytearray()  # body bytes not yet de-chunked
        self.sse = bytearray()  # de-chunked bytes not yet split into frames
        self.times = array("d")  # arrival time of each token event
        self.data: list[bytes] = []  # raw data payload of each token event
        self.terminal = False
        self.done_data = b""
        self.fail_data = b""
        self.last_id = 0
        self.dup_ids = 0
        self.lost_ids = 0
        self.pings = 0
        self.outcome = "cut"  # until proven otherwise
        self.error = ""

    def feed(self, chunk: bytes, now: float) -> bool:
        """Take bytes from the socket; return True once the response body is complete."""
        if not self.status:
            self.head += chunk
            raw = take_head(self.head)  # HeadTooLong, a ValueError: a head too large
            if raw is None:
                return False
            head = parse_response_head(raw)  # ValueError: an unparsable response
            chunk = bytes(self.head)
            self.status = head.status
            self.chunked = response_framing(head.status, head.fields) == "chunked"
            self.opened = now
            if self.status != 200:
                self.outcome, self.error = "failed", f"HTTP {self.status}"
                return True
        if not self.chunked:
            self.sse += chunk
            self._frames(now)
            return False  # the body ends at EOF
        self.raw += chunk
        data, finished = self.decoder.decode(self.raw)
        if not self.sse and data.endswith(b"\n\n"):
            # The common case: the read held whole SSE frames, so they are split without buffering.
            for frame in data[:-2].split(b"\n\n"):
                self._frame(frame, now)
        elif data:
            self.sse += data
            self._frames(now)
        return finished

    def _frames(self, now: float) -> None:
        """Split complete SSE frames (a blank line ends one) and handle each."""
        buf, pos = self.sse, 0
        while (end := buf.find(b"\n\n", pos)) >= 0:
            self._frame(bytes(buf[pos:end]), now)
            pos = end + 2
        del buf[:pos]

    def _frame(self, frame: bytes, now: float) -> None:
        """Handle one frame. JSON text never holds a raw LF, so splitting on LF is exact here."""
        # Fast paths for the token frames of each mode, in their documented shapes.
        if self.mode == "app":
            lines = frame.split(b"\n")
            if len(lines) == 3 and lines[1] == b"event: token" and lines[2][:6] == b"data: ":
                event_id = int(lines[0][4:]) if lines[0][:4] == b"id: " else -1
                if event_id == self.last_id + 1:
                    self.last_id = event_id
                else:
                    self._check_id(event_id)
                self.times.append(now)
                self.data.append(lines[2][6:])
                return
        elif frame[:7] == b"data: {" and (self.mode == "naive" or b'"delta":{"content":' in frame):
            self.times.append(now)
            self.data.append(frame[6:])
            return
        if frame.startswith(b":"):
            self.pings += 1
            return
        event, data = b"message", None
        for line in frame.split(b"\n"):
            name, _, value = line.partition(b": ")
            if name == b"data":
                data = value
            elif name == b"event":
                event = value
            elif name == b"id":
                self._check_id(int(value))
        if data is None:
            return  # the retry: hint
        if self.mode == "app":
            if event == b"token":
                self.times.append(now)
                self.data.append(data)
            elif event == b"done":
                self.terminal, self.done_data = True, data
            elif event == b"fail":
                self.terminal, self.fail_data = True, data
        elif data == b"[DONE]":
            self.terminal = True
        elif self.mode == "naive" or b'"delta":{"content":' in data:
            self.times.append(now)
            self.data.append(data)
        elif self.mode == "direct" and b'"finish_reason":"' in data:
            self.done_data = data

    def _check_id(self, event_id: int) -> None:
        """Count repeated and skipped event ids (ids are consecutive from 1; -1 is a missing id)."""
        if event_id <= self.last_id:
            self.dup_ids += 1
            return
        self.lost_ids += event_id - self.last_id - 1
        self.last_id = event_id

    def text_and_tokens(self) -> tuple[str, int]:
        """Decode every token payload at once: the text, and the upstream tokens it carries."""
        if not self.data:
            return "", 0
        values = json.loads(b"[" + b",".join(self.data) + b"]")
        if self.mode == "direct":
            return "".join(v["choices"][0]["delta"]["content"] for v in values), len(values)
        if self.mode == "naive":
            return "".join(v["text"] for v in values), len(values)
        return "".join(v["text"] for v in values), sum(v["tokens"] for v in values)

    def end(self, now: float, error: str = "") -> None:
        """Record how the stream ended: done, failed, or cut (before its terminal event)."""
        self.ended = now
        if self.outcome == "failed":
            return
        if error:
            self.error = error
        if self.fail_data:
            self.outcome, self.error = "failed", f"fail event {self.fail_data[:200]!r}"
        elif self.terminal and not error:
            self.outcome = "done"
        elif not self.error:
            self.error = "connection ended before the terminal event"


def build_request(mode: str, host: str, port: int, index: int, directive: str) -> bytes:
    """Return the exact bytes of one request (a POST with a ``[fake ...]`` directive)."""
    message = {"role": "user", "content": f"bench stream {index} [fake {directive}]"}
    if mode == "direct":
        path, extra = "/v1/chat/completions", "Authorization: Bearer fake\r\n"
        body = {"model": "bench", "stream": True, "messages": [message]}
    else:
        path, extra = "/stream", ""
        body = {"messages": [message]}
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\n{extra}Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


# --- /proc readings -------------------------------------------------------------------------------------


def own_cpu_seconds() -> float:
    """Return this process's user + system CPU seconds."""
    times = os.times()
    return times.user + times.system


def cpu_snapshot(watch: dict[str, int]) -> dict[str, float | None]:
    """Read the CPU seconds of every watched process, and our own."""
    snap: dict[str, float | None] = {name: cpu_seconds(pid) for name, pid in watch.items()}
    snap["loadgen"] = own_cpu_seconds()
    return snap


# --- the run --------------------------------------------------------------------------------------------


def cpu_delta(before: dict, after: dict) -> dict[str, float | None]:
    """Return the CPU seconds each process spent between two snapshots."""
    return {
        name: round(after[name] - before[name], 3)
        if after.get(name) is not None and before.get(name) is not None
        else None
        for name in before
    }


def percentiles(values: list[float] | array, scale: float = 1000.0) -> dict[str, float | None]:
    """Return p50, p99, p99.9 and max (nearest rank), times ``scale`` (seconds to ms by default)."""
    if not values:
        return {"p50": None, "p99": None, "p999": None, "max": None}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))] * scale, 3)

    return {"p50": at(0.50), "p99": at(0.99), "p999": at(0.999), "max": round(ordered[-1] * scale, 3)}


class Load:
    """N concurrent clients started over a ramp, each running ``--rounds`` streams back to back.

    With more than one round, the relay sees a steady state after the ramp: N streams open, and new
    ones arriving at an even pace, as the old ones end. Stream ``k`` is client ``k % N``'s round
    ``k // N``.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        url = urlsplit(args.url)
        if url.hostname not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"loadgen: only 127.0.0.1 targets are allowed, got {args.url!r}")
        self.address = ("127.0.0.1", url.port or 80)
        self.watch = dict(args.watch)
        self.clients = args.streams
        self.streams = [Stream(args.mode) for _ in range(args.streams * args.rounds)]
        self.requests = [
            build_request(args.mode, "127.0.0.1", self.address[1], i, args.directive)
            for i in range(args.streams)
        ]
        self.epoll = select.epoll()
        self.live: dict[int, tuple[socket.socket, int, list[bytes]]] = {}  # by fd: socket, stream, unsent
        # Streams whose request is out and that have not ended: what the relay holds, whether it has
        # answered yet or not (the naive relay sends its response head only with the first token).
        self.open = 0
        self.answered = 0  # of those, the streams whose response head has arrived
        self.deadline = float("inf")
        self.samples: list[list] = []
        self.window: dict = {}

    # --- sockets --------------------------------------------------------------------------------

    def start(self, index: int, now: float) -> None:
        """Begin a non-blocking connect for stream ``index``."""
        stream = self.streams[index]
        stream.started = now
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            stream.end(now, f"connect: {os.strerror(code)}")
            return
        self.live[sock.fileno()] = (sock, index, [self.requests[index % self.clients]])
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def writable(self, fd: int, now: float) -> None:
        """The connect finished: check it, then send the request."""
        sock, index, unsent = self.live[fd]
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.close(fd, now, f"connect: {os.strerror(code)}")
            return
        try:
            sent = sock.send(unsent[0])
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(fd, now, f"send: {exc.strerror or exc}")
            return
        unsent[0] = unsent[0][sent:]
        if not unsent[0]:
            self.epoll.modify(fd, select.EPOLLIN)
            self.streams[index].sent = now
            self.open += 1

    def readable(self, fd: int, now: float) -> None:
        """Read what arrived and feed it to the stream's parser."""
        sock, index, _ = self.live[fd]
        stream = self.streams[index]
        try:
            chunk = sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(fd, now, f"recv: {exc.strerror or exc}")
            return
        if not chunk:
            self.close(fd, now, "" if stream.status and not stream.chunked else "early end of file")
            return
        was_answered = stream.opened
        try:
            finished = stream.feed(chunk, now)
        except ValueError as exc:
            self.close(fd, now, f"unparsable response: {exc}")
            return
        if stream.opened and not was_answered:
            self.answered += 1
        if finished:
            self.close(fd, now)

    def close(self, fd: int, now: float, error: str = "") -> None:
        """Forget a connection, record how its stream ended, and start the client's next round."""
        sock, index, _ = self.live.pop(fd)
        self.epoll.unregister(fd)
        sock.close()
        stream = self.streams[index]
        if stream.sent:
            self.open -= 1
        if stream.opened:
            self.answered -= 1
        stream.end(now, error)
        if index + self.clients < len(self.streams) and now < self.deadline:
            self.start(index + self.clients, now)

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> dict:
        """Run every stream to its end or to the deadline, and return the summary."""
        args = self.args
        t0 = time.monotonic()
        before = cpu_snapshot(self.watch)
        self.deadline = deadline = t0 + args.deadline
        step = args.ramp / self.clients
        started = 0  # clients started so far
        next_sample = t0
        next_progress = t0 + args.progress if args.progress else float("inf")
        while started < self.clients or self.live:
            now = time.monotonic()
            if now >= deadline:
                self.cut_all(now)
                break
            while started < self.clients and t0 + started * step <= now:
                self.start(started, now)
                started += 1
            if now >= next_sample:
                self.sample(t0, now)
                next_sample = now + _SAMPLE_SECONDS
            if now >= next_progress:
                self.progress(t0, now)
                next_progress = now + args.progress
            if args.window:
                self.soak_window(t0, now)
            wake = min(deadline, next_sample, next_progress)
            if started < self.clients:
                wake = min(wake, t0 + started * step)
            for fd, events in self.epoll.poll(max(0.0, wake - time.monotonic())):
                now = time.monotonic()
                if fd not in self.live:
                    continue
                if events & select.EPOLLOUT:
                    self.writable(fd, now)
                else:
                    self.readable(fd, now)
        after = cpu_snapshot(self.watch)
        elapsed = time.monotonic() - t0
        self.epoll.close()
        return self.summary(t0, elapsed, before, after)

    def cut_all(self, now: float) -> None:
        """The hard deadline: close every stream that is still open."""
        print(f"      loadgen: deadline reached, cutting {len(self.live)} streams", file=sys.stderr)
        for fd in list(self.live):
            self.close(fd, now, "cut at the deadline")
        for stream in self.streams:
            if not stream.started:
                stream.error = "not started before the deadline"

    def sample(self, t0: float, now: float) -> None:
        """Record the open streams, and the watched processes' RSS and CPU."""
        rss = {name: rss_kb(pid) for name, pid in self.watch.items()}
        self.samples.append([round(now - t0, 3), self.open, rss, cpu_snapshot(self.watch)])

    def progress(self, t0: float, now: float) -> None:
        """Print a line every few seconds, for long phases."""
        ended = sum(1 for s in self.streams if s.ended)
        print(
            f"      loadgen t={now - t0:5.1f}s  open {self.open} (answered {self.answered})"
            f"  ended {ended}/{len(self.streams)}",
            file=sys.stderr,
            flush=True,
        )

    def soak_window(self, t0: float, now: float) -> None:
        """Soak: measure over ``--window`` seconds that start once every stream is open."""
        window, args = self.window, self.args
        if "end" in window:
            return
        if "start" not in window:
            # Every stream has been answered (set up by the relay), or the relay is too far behind.
            if self.answered == self.clients or now >= t0 + args.ramp + args.open_wait:
                window.update(start=now, cpu_before=cpu_snapshot(self.watch), open_at_start=self.open)
            return
        if "rss_mid" not in window and now >= window["start"] + args.window / 2:
            window["rss_mid"] = {name: rss_kb(pid) for name, pid in self.watch.items()}
            window["open_mid"] = self.open
        if now >= window["start"] + args.window:
            window.update(end=now, cpu_after=cpu_snapshot(self.watch))

    # --- the summary ----------------------------------------------------------------------------

    def summary(self, t0: float, elapsed: float, before: dict, after: dict) -> dict:
        """Check every stream's text and ids, and aggregate the figures."""
        args = self.args
        expected = expected_text(args.tokens)
        counts: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        fail_codes: Counter[str] = Counter()  # every `fail` event seen, by its code (worker_lost: 0)
        ttft, response_start, late, gaps = [], [], [], array("d")
        last_due = args.ttft + (args.tokens - 1) / args.tps  # the last token, on the upstream's schedule
        lost = dup = tokens = events = pings = 0
        for stream in self.streams:
            events += len(stream.times)
            pings += stream.pings
            text, got = stream.text_and_tokens()
            tokens += got
            if stream.opened:
                response_start.append(stream.opened - stream.started)
            if stream.times:
                ttft.append(stream.times[0] - stream.started)
                times = stream.times
                gaps.extend(times[i] - times[i - 1] for i in range(1, len(times)))
            outcome = stream.outcome
            if stream.fail_data:
                fail_codes[fail_code(stream.fail_data)] += 1
            if outcome == "done" and stream.times:
                late.append(stream.times[-1] - stream.started - last_due)
            if outcome == "done":
                lost += stream.lost_ids + max(0, args.tokens - got)
                dup += stream.dup_ids + max(0, got - args.tokens)
                finish_ok = args.mode == "naive" or b'"finish_reason":"stop"' in stream.done_data
                if text != expected or not finish_ok:
                    counts["mismatch"] += 1
                    outcome = "failed"
                    errors["text or finish reason differs from the expected answer"] += 1
            if outcome != "done" and stream.error:
                errors[stream.error] += 1
            counts[outcome] += 1
        cpu = cpu_delta(before, after)
        peak = max(self.samples, key=lambda s: s[1]) if self.samples else [0, 0, {}, {}]
        return {
            "mode": args.mode,
            "streams": args.streams,
            "rounds": args.rounds,
            "total_streams": len(self.streams),
            "tokens": args.tokens,
            "directive": args.directive,
            "ramp_s": args.ramp,
            "elapsed_s": round(elapsed, 3),
            "completed": counts["done"],
            "failed": counts["failed"],
            "cut": counts["cut"],
            "mismatch": counts["mismatch"],
            "lost": lost,
            "dup": dup,
            "tokens_received": tokens,
            "token_events": events,
            "pings": pings,
            "ttft_ms": percentiles(ttft),
            "response_start_ms": percentiles(response_start),
            "gap_ms": percentiles(gaps),
            "last_token_late_ms": percentiles(late),
            "gaps": len(gaps),
            "cpu_s": cpu,
            "peak_open": peak[1],
            "rss_kb_at_peak": peak[2],
            "samples": self.samples,
            "window": self.window_summary(t0),
            "errors": dict(errors.most_common(10)),
            "fail_codes": dict(fail_codes),
        }

    def window_summary(self, t0: float) -> dict | None:
        """Soak: CPU over the window, RSS in its middle, and the token events that arrived in it."""
        window = self.window
        if "end" not in window:
            return None
        start, end = window["start"], window["end"]
        tokens = sum(1 for s in self.streams for t in s.times if start <= t < end)
        pings = sum(s.pings for s in self.streams)
        return {
            "start_s": round(start - t0, 3),
            "seconds": round(end - start, 3),
            "cpu_s": cpu_delta(window["cpu_before"], window["cpu_after"]),
            "open_at_start": window["open_at_start"],
            "rss_kb_mid": window.get("rss_mid", {}),
            "open_mid": window.get("open_mid", 0),
            "token_events": tokens,
            "pings_whole_run": pings,
        }


def fail_code(data: bytes) -> str:
    """Return the ``code`` of a ``fail`` event's data, or "unparsable"."""
    try:
        code = json.loads(data)["code"]
    except (ValueError, KeyError, TypeError):
        return "unparsable"
    return code if isinstance(code, str) else "unparsable"


def _watch(text: str) -> tuple[str, int]:
    """Parse ``NAME=PID``."""
    name, sep, pid = text.partition("=")
    if not sep or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PID, got {text!r}")
    return name, int(pid)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the relay (or the fake upstream, for direct)")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--streams", type=int, required=True, help="concurrent clients")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=50.0, help="upstream tokens per second")
    parser.add_argument("--ttft", type=float, default=0.1, help="upstream seconds to the first token")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds over which the clients start")
    parser.add_argument("--rounds", type=int, default=1, help="streams each client runs back to back")
    parser.add_argument("--deadline", type=float, default=60.0, help="hard limit for the whole phase")
    parser.add_argument("--window", type=float, default=0.0, help="soak: seconds of steady measurement")
    parser.add_argument("--open-wait", type=float, default=10.0, help="soak: wait this long after the ramp")
    parser.add_argument("--watch", type=_watch, action="append", default=[], metavar="NAME=PID")
    parser.add_argument("--progress", type=float, default=0.0, help="print a line every this many s")
    parser.add_argument("--out", help="write the JSON summary here (default: standard output)")
    args = parser.parse_args(argv)
    # Rounds as high as the start-cost step needs (many one-token streams from a few clients), with
    # the total bounded, since every stream's record is kept until the summary.
    if not 1 <= args.streams <= 20_000 or not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--streams must be between 1 and 20000, --rounds between 1 and {MAX_ROUNDS}")
    if args.streams * args.rounds > MAX_TOTAL_STREAMS:
        parser.error(f"--streams times --rounds must be at most {MAX_TOTAL_STREAMS}")
    if not 1 <= args.tokens <= 1024:
        parser.error("--tokens must be between 1 and 1024 (the app's default max_tokens)")
    args.directive = f"tokens={args.tokens} tps={args.tps:g} ttft={args.ttft:g}"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one phase and write its summary."""
    args = parse_args(argv)
    result = Load(args).run()
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
