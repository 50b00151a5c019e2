"""The benchmark, in one command: this app's relay against a naive baseline, side by side, on loopback.

    python -m bench.run                 # steps of 50 to 2,000 streams, a 5,000 soak: about 15 minutes
    python -m bench.run --quick         # a smoke run of about 20 seconds (the test suite runs it)
    python -m bench.run --steps 200 --tps 20 --soak 0 --profile 200
    python -m bench.run --relays all --steps 50,200 --soak 0   # with the three anchors too
    python -m bench.run --store redis --steps 50,100 --soak 1000 --relays app   # the Redis store too
    python -m bench.run --steps none --soak 0      # the start-cost step alone: about a minute

What it does: it starts the fake upstream (``python -m fakeupstream``), then for each step of N
concurrent streams it measures each of these in turn, never two at the same time:

1. the upstream directly, to know its own time to first token and gaps at that concurrency;
2. this app under gunicorn (gunicorn.conf.py, one gevent worker), pinned to one core;
3. the naive relay (examples/step1_relay.py, the baseline) under the same gunicorn settings, same core;
4. with ``--relays``, the other anchors (bench/anchors/: Flask + httpx lines, FastAPI on
   uvicorn, Node), each as its tutorial runs it, on the same core.

With ``--store redis``, the app is measured twice at every step, its memory store first (step 2),
then its Redis run store (the ``redis`` phase, right after it), against a real ``redis-server``
that the run starts on the harness core and always stops (bench/redis_server.py); the output adds a
table of the Redis store beside the memory store (relay and Redis CPU per token, commands and reads
per token, connections, ``fail`` codes) and, at the end, the Redis store's goals, reached or not.
``--workers N`` (Redis store only: the memory store lives in one worker) runs that phase with N
gunicorn workers, on N relay cores where the machine has them.

Then the start-cost step (bench/start_cost.py; ``--start-streams 0 --burst 0`` skips it): the
relay worker's CPU per stream over many one-token answers at a fixed concurrency (``--start-streams``
N, ``--start-concurrency`` C), and the time to first token it adds in a burst of streams all
started within a few seconds (``--burst`` N, ``--burst-seconds`` S), for the app, the app with its
per-client limits on but never reached (``app+limits``), the naive relay and any anchor of
``--relays``; its goals are printed at the end. ``--steps none`` runs no concurrency step.

Each relay is started fresh for each step (a quick run keeps one of each for both its steps),
warmed up, and measured at the same upstream pace and answer length. In a step, each of N clients
runs two streams back to back, the clients starting over one stream's length, so that the relay
holds N streams in a steady state, new ones arriving as old ones end. The load generator
(bench/loadgen.py) checks every stream's text exactly. It prints a table row per step and relay,
every figure of the app also as a ratio to the baseline (and to each anchor measured), then a soak
of many open streams on a slow upstream with heartbeats on. Results go to ``--out`` as JSON (and
the raw summaries of every phase under ``raw/``), with a plot (``bench.png``) if matplotlib is
installed (``pip install -r bench/requirements.txt``).

Deliberate choices:

- The relay gets a core of its own (``taskset -c``); the fake upstream, the load generator and this
  script share the other one, and their own CPU is reported: SATURATED means that the harness, not
  the relay, may be what limits a step.
- Ratios to the baseline are printed because they hold on a noisy shared machine; absolute
  microseconds vary with the machine and its neighbours.
- Bounded: every phase has a hard time limit, every loop a count; every child runs in its own
  process group and is killed at the end, whatever happens. Loopback only.
- The soft open-file limit is raised to the hard limit (each open stream holds two sockets in the
  relay's worker); a step that cannot fit under it is skipped, and the output says so.
- The app's per-client limits are turned off in every relay's environment (``RATE_LIMIT=0``,
  ``MAX_RUNS_PER_CLIENT=0``): the load generator is one client with thousands of streams. Only the
  start-cost step's ``app+limits`` turns them on, set high (bench/processes.py's LIMITS_HIGH).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import loadgen, redis_server, report, start_cost
from bench.processes import (
    DEFAULT_RELAYS,
    LIMITS_OFF,
    NODE_ANCHOR,
    RELAYS,
    Child,
    Relay,
    node_version,
    relay_kind,
    start_upstream,
    wait_idle,
)
from bench.procfs import rss_kb
from bench.redis_server import RedisServer

ROUNDS = 2  # streams each client runs back to back in a step
SOAK_HEARTBEAT = 5.0
SOAK_FIRST_TOKEN = 1.0
FDS_PER_STREAM = 2  # in the relay's worker: the client's socket and the upstream's
FD_MARGIN = 200  # files every process holds besides its streams
REDIS_SAMPLE_SECONDS = 0.5  # how often connected_clients and the workers' Redis connections are read


class RedisPeaks:
    """While a phase runs: the peak of connected_clients, and of each worker's own Redis connections."""

    def __init__(self, server: RedisServer, workers: list[int]) -> None:
        self.server = server
        self.workers = workers
        self.clients = 0
        self.by_worker: dict[int, int] = dict.fromkeys(workers, 0)

    def __call__(self) -> None:
        """Take one sample."""
        clients, by_worker = self.server.sample(self.workers)
        self.clients = max(self.clients, clients)
        for pid, held in by_worker.items():
            if held is not None:
                self.by_worker[pid] = max(self.by_worker[pid], held)

    def figures(self) -> dict:
        """Return the peaks as report.redis_figures takes them."""
        return {"clients": self.clients, "by_worker": self.by_worker}


class Bench:
    """One run of the benchmark: its settings, its children, and the results so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.started = time.monotonic()
        self.relay_core: int | None = None
        self.relay_cores: str | None = None  # the Redis-store phase's workers' cores ("0", "0,1", ...)
        self.harness_cores: str | None = None
        self.redis: RedisServer | None = None
        # The phases of a step after the upstream's: the relays, with the Redis store after the app.
        self.phases = list(args.relays)
        if args.store == "redis":
            self.phases.insert(self.phases.index("app") + 1 if "app" in self.phases else 0, "redis")
        self.upstream: Child | None = None
        self.upstream_url = ""
        self.live: list = []  # children to stop at the end, whatever happens
        self.kept: dict[str, Relay] = {}  # relays kept from step to step (quick runs only)
        self.results: dict = {
            "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
            "machine": machine(),
            "config": {
                "steps": args.steps,
                "tokens": args.tokens,
                "tps": args.tps,
                "ttft": args.ttft,
                "soak": args.soak,
                "soak_interval": args.soak_interval,
                "soak_rate": args.soak_rate,
                "soak_heartbeat": SOAK_HEARTBEAT,
                "store": args.store,
                "workers": args.workers,
                "env": dict(LIMITS_OFF),
                "start_streams": args.start_streams,
                "start_concurrency": args.start_concurrency,
                "burst": args.burst,
                "burst_seconds": args.burst_seconds,
            },
            "notes": [],
            "steps": [],
            "soak": None,
            "start_cost": None,
        }

    # --- output ---------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """Print a progress line with the time since the start."""
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def note(self, message: str) -> None:
        """Print and keep a note for the results."""
        self.say(message)
        self.results["notes"].append(message)

    def save(self) -> Path:
        """Write the results so far (after every phase, so that a failed run still leaves them)."""
        path = self.out / "results.json"
        path.write_text(json.dumps(self.results, indent=1))
        return path

    # --- setup ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Raise the open-file limit, pin the harness, start the fake upstream."""
        (self.out / "raw").mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            self.note(f"open-file limit: raised the soft limit from {soft} to {hard} (the hard limit)")
        else:
            self.note(f"open-file limit: {soft} (already the hard limit)")
        self.results["open_file_limit"] = hard
        self.note(
            "limits: the app's per-client limits are off in every relay (RATE_LIMIT=0, "
            "MAX_RUNS_PER_CLIENT=0): the load generator is one client with every stream"
        )
        self.pin_cores()
        self.upstream, self.upstream_url = start_upstream()
        self.live.append(self.upstream)
        self.say(f"fake upstream: {self.upstream_url} (pid {self.upstream.pid})")
        if self.args.store == "redis":
            self.redis = RedisServer(self.harness_cores, self.out / "logs" / "redis-server.log")
            self.live.append(self.redis)
            self.results["redis"] = {"pid": self.redis.pid, "dir": self.redis.dir, "port": self.redis.port}
            where = f"on the harness core {self.harness_cores}" if self.harness_cores else "not pinned"
            self.note(
                f"redis-server: {self.redis.url} (pid {self.redis.pid}), no persistence, {where} "
                "(taskset), beside the fake upstream and the load generator: the relay's core "
                "measures the relay alone, and Redis's CPU is reported apart"
            )

    def pin_cores(self) -> None:
        """Give the relay its core (N cores to N workers where there are enough), the harness the rest."""
        cores = sorted(os.sched_getaffinity(0))
        workers = self.args.workers
        if len(cores) < 2 or not shutil.which("taskset"):
            self.note(
                "cores: fewer than 2 (or no taskset): nothing pinned, the harness shares the relay's CPU"
            )
            if workers > 1:
                self.note(f"workers: {workers} workers unpinned: these figures cannot show scaling")
            return
        self.relay_core = cores[0]
        if len(cores) >= workers + 1:
            relay, harness = cores[:workers], cores[workers:]
        else:
            relay, harness = cores[:1], cores[1:]
            self.note(
                f"workers: the {workers} workers of the Redis store share the relay's core "
                f"{cores[0]}: this machine has {len(cores)} cores, so these figures cannot show "
                f"scaling; that needs {workers} relay cores plus at least one for the harness and Redis"
            )
        self.relay_cores = ",".join(map(str, relay))
        self.harness_cores = ",".join(map(str, harness))
        os.sched_setaffinity(0, set(harness))  # inherited by the fake upstream and the load generator
        workers_note = (
            f"; the Redis store's {workers} workers on cores {self.relay_cores}" if workers > 1 else ""
        )
        self.note(
            f"cores: relay on core {self.relay_core} (taskset -c {self.relay_core}){workers_note}; "
            f"fake upstream, load generator{', redis-server' if self.args.store == 'redis' else ''} "
            f"and this script on core {self.harness_cores}"
        )

    def fits(self, streams: int, what: str) -> bool:
        """Check that a phase fits under the open-file limit; note it and return False if not."""
        needed = FDS_PER_STREAM * streams + FD_MARGIN
        limit = self.results["open_file_limit"]
        if needed > limit:
            self.note(
                f"{what} skipped: {streams} streams need about {needed} open files, the limit is {limit}"
            )
            return False
        return True

    # --- phases ---------------------------------------------------------------------------------

    def loadgen(
        self,
        label: str,
        mode: str,
        url: str,
        streams: int,
        sampler: Callable[[], None] | None = None,
        **options: float,
    ) -> dict:
        """Run the load generator once (one phase) and return its summary; ``sampler`` runs meanwhile."""
        path = self.out / "raw" / f"{label}.json"
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            url,
            "--mode",
            mode,
            "--streams",
            str(streams),
        ]
        for name, value in options.items():
            if name == "watch":
                for watched, pid in value.items():
                    argv += ["--watch", f"{watched}={pid}"]
            else:
                argv += [f"--{name.replace('_', '-')}", f"{value:g}"]
        argv += ["--out", str(path)]
        child = Child("load generator", argv)
        self.live.append(child)
        deadline = time.monotonic() + options["deadline"] + 30
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"the load generator overran its deadline in phase {label}")
                try:
                    code = child.process.wait(timeout=min(left, REDIS_SAMPLE_SECONDS) if sampler else left)
                    break
                except subprocess.TimeoutExpired:
                    if sampler is not None:
                        sampler()
        finally:
            child.stop(signal.SIGKILL)
            self.live.remove(child)
        if code != 0:
            raise RuntimeError(f"the load generator failed in phase {label} (exit {code})")
        return json.loads(path.read_text())

    def start_relay(self, kind: str, label: str, heartbeat: float) -> Relay:
        """Start one relay, fresh, and wait until it has served its warm-up streams.

        A quick run keeps each relay for both its steps (the point is only that everything works);
        a full run starts a fresh one for every step, so that each step's idle RSS is a clean base.
        """
        if kind in self.kept:
            return self.kept[kind]
        options: dict = {"core": self.relay_core}
        if kind == "redis":
            self.redis.flush()  # a fresh relay, a fresh Redis: nothing left from the phase before
            options = {
                "core": self.relay_cores,
                "redis_url": self.redis.url,
                "workers": self.args.workers,
            }
        relay = Relay(
            kind,
            self.upstream_url,
            heartbeat=heartbeat,
            log=self.out / "logs" / f"{label}.log",
            **options,
        )
        self.live.append(relay)
        relay.wait_ready()
        time.sleep(0.3)  # let the warm-up streams' greenlets end before the idle reading
        if self.args.quick:
            self.kept[kind] = relay
        return relay

    def stop_relay(self, relay: Relay) -> None:
        """Stop a relay after its phase (a quick run stops them only at the end)."""
        if relay.kind not in self.kept:
            relay.stop()
            self.live.remove(relay)

    def step(self, streams: int) -> None:
        """Measure one step: the upstream directly, then each relay in turn (the app first)."""
        args = self.args
        stream_seconds = args.ttft + args.tokens / args.tps
        # The clients start over one stream's length and each runs ROUNDS streams back to back: after
        # the ramp, N streams are open, and new ones arrive at an even pace as old ones end.
        timing = {
            "tokens": args.tokens,
            "tps": args.tps,
            "ttft": args.ttft,
            "ramp": round(stream_seconds, 3),
            "rounds": ROUNDS,
            "deadline": round(2 * (ROUNDS + 1) * stream_seconds + 10, 1),
        }
        entry: dict = {"streams": streams, "ramp_s": timing["ramp"], "rounds": ROUNDS}
        self.results["steps"].append(entry)
        self.say(f"step {streams}: the upstream directly ...")
        entry["upstream"] = report.direct_figures(self.load_direct(f"{streams}-upstream", streams, timing))
        rows = [report.row(streams, "upstream", entry["upstream"])]
        for kind in self.phases:
            self.say(f"step {streams}: {kind} relay ({relay_kind(kind).what}) ...")
            entry[kind] = self.measure_relay(kind, streams, timing, entry["upstream"])
            rows.append(report.row(streams, kind, entry[kind]))
            self.save()
        if "app" in entry:
            others = [kind for kind in self.args.relays if kind != "app"]
            entry["ratios"] = {kind: report.ratios(entry["app"], entry[kind]) for kind in others}
            rows += [report.ratio_row(streams, kind, entry["ratios"][kind]) for kind in others]
        print("\n".join(["", report.HEADER, *rows, ""]), flush=True)
        if "redis" in entry:
            if "app" in entry:
                entry["redis_vs_memory"] = report.redis_vs_memory(entry["app"], entry["redis"])
            redis_rows = report.redis_rows(streams, entry.get("app"), entry["redis"])
            print("\n".join([report.REDIS_HEADER, *redis_rows, ""]), flush=True)
        self.warn_saturation(streams, entry)
        self.save()

    def load_direct(self, label: str, streams: int, timing: dict) -> dict:
        """Run a phase against the fake upstream itself, once it is idle; return the summary."""
        wait_idle(self.upstream.pid)
        return self.loadgen(
            label, "direct", self.upstream_url, streams, **timing, watch={"upstream": self.upstream.pid}
        )

    def measure_relay(self, kind: str, streams: int, timing: dict, direct: dict) -> dict:
        """Measure one relay at one step."""
        label = f"{streams}-{kind}"
        profile = streams in self.args.profile
        if profile and relay_kind(kind).server == "node":
            self.note(f"profile of the {kind} relay skipped: py-spy samples Python processes only")
            profile = False
        res, idle, profiled, redis = self.load_relay(
            kind, label, streams, timing, heartbeat=3600, profile=profile
        )
        figures = report.relay_figures(res, direct, idle, 1000 / self.args.tps)
        if redis is not None:
            figures["workers"] = self.args.workers
            figures["redis"] = report.redis_figures(res, **redis, relay_us=figures["cpu_us_per_token"])
        if profiled is not None:
            figures["profile"] = profiled
        return figures

    def load_relay(
        self,
        kind: str,
        label: str,
        streams: int,
        timing: dict,
        *,
        heartbeat: float,
        profile: bool = False,
        warmup: dict | None = None,
    ) -> tuple[dict, int, dict | None, dict | None]:
        """Run one phase of load through a relay (after an unmeasured ``warmup`` phase, if given).

        Return its summary, its workers' idle RSS (KB), its profile, and for the Redis store what
        redis-server's figures are made of (its counters around the phase, the peaks sampled).
        """
        relay = self.start_relay(kind, label, heartbeat=heartbeat)
        profiler = None
        watch = {"relay" if i == 0 else f"relay-{i + 1}": pid for i, pid in enumerate(relay.workers)}
        watch["upstream"] = self.upstream.pid
        redis = sampler = None
        try:
            if warmup is not None:
                self.loadgen(f"{label}-warmup", relay_kind(kind).mode, relay.url, streams, **warmup)
            idle = sum(rss_kb(pid) or 0 for pid in relay.workers)
            wait_idle(self.upstream.pid)
            if kind == "redis":
                watch["redis"] = self.redis.pid
                sampler = RedisPeaks(self.redis, relay.workers)
                redis = {"idle_rss_kb": self.redis.rss_kb(), "before": self.redis.counters()}
            if profile:
                profiler = self.start_profiler(relay, label, timing)
            res = self.loadgen(
                label, relay_kind(kind).mode, relay.url, streams, sampler, **timing, watch=watch
            )
            if redis is not None:
                redis.update(after=self.redis.counters(), peaks=sampler.figures())
        finally:
            self.stop_relay(relay)
        return res, idle, None if profiler is None else self.finish_profiler(*profiler), redis

    def warn_saturation(self, streams: int, entry: dict) -> None:
        """Say when the harness itself was saturated during a step."""
        for phase in ("upstream", *self.phases):
            pct = entry[phase]["harness_cpu_pct"]
            if pct is not None and pct >= report.SATURATED:
                self.note(
                    f"step {streams}, {phase} phase: the harness core was SATURATED ({pct:.0f}%: fake "
                    "upstream and load generator together): the harness may be what limits this step"
                )

    # --- the soak -------------------------------------------------------------------------------

    def soak(self, streams: int) -> None:
        """Many open streams on a slow upstream, heartbeats on: memory per stream and idle CPU."""
        args = self.args
        # A ramp slow enough for the relay to open every stream (each costs it milliseconds of CPU
        # to set up), so that the window sees idle streams, not a backlog of new ones.
        ramp = streams / args.soak_rate
        open_wait = 10.0
        # Enough tokens that every stream stays open through the ramp and the whole window.
        tokens = math.ceil((ramp + open_wait + args.soak_window + 5) / args.soak_interval) + 1
        timing = {
            "tokens": tokens,
            "tps": 1 / args.soak_interval,
            "ttft": SOAK_FIRST_TOKEN,
            "ramp": ramp,
            "window": args.soak_window,
            "open_wait": open_wait,
            "progress": 10,
            "deadline": ramp + SOAK_FIRST_TOKEN + tokens * args.soak_interval + 30,
        }
        soak: dict = {"streams": streams, "tokens": tokens, "interval_s": args.soak_interval}
        self.results["soak"] = soak
        for kind in self.phases:
            self.say(
                f"soak: {streams} streams on the {kind} relay, 1 token every {args.soak_interval:g} s, "
                f"heartbeat {SOAK_HEARTBEAT:g} s, about {timing['deadline'] - 30:.0f} s ..."
            )
            res, idle, _, redis = self.load_relay(
                kind, f"soak-{kind}", streams, timing, heartbeat=SOAK_HEARTBEAT
            )
            soak[kind] = report.soak_figures(res, idle)
            self.say(report.soak_line(kind, soak[kind]))
            if redis is not None:
                soak[kind]["workers"] = args.workers
                soak[kind]["redis"] = report.redis_soak_figures(res, **redis)
                self.say(report.redis_soak_line(soak[kind]))
            self.save()

    # --- profiling ------------------------------------------------------------------------------

    def start_profiler(self, relay: Relay, label: str, timing: dict) -> tuple[Child, Path] | None:
        """Sample the relay's worker with py-spy for the length of the load, if py-spy is here."""
        py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if py_spy is None:
            self.note("profile skipped: py-spy is not installed (pip install py-spy)")
            return None
        path = self.out / f"profile-{label}.txt"
        seconds = max(1, round(timing["ramp"] * (timing["rounds"] + 1)))
        argv = [
            py_spy,
            "record",
            "--pid",
            str(relay.worker),
            "--duration",
            str(seconds),
            "--rate",
            "100",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(path),
        ]
        child = Child("py-spy", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.live.append(child)
        return child, path

    def finish_profiler(self, child: Child, path: Path) -> dict:
        """Wait for py-spy and summarise what it saw."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=60)
        child.stop(signal.SIGINT)
        self.live.remove(child)
        if not path.exists():
            return {"error": "py-spy wrote nothing (is ptrace allowed here?)"}
        summary = report.profile_summary(path)
        summary["file"] = str(path)
        return summary

    # --- the end --------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every child still running, newest first."""
        for child in reversed(self.live):
            child.stop()
        self.live.clear()

    def conclude(self) -> None:
        """Print the highest step held by each relay, the soak, the profiles; write JSON and plot."""
        limit = 2 * 1000 / self.args.tps
        held = {}
        for kind in self.phases:
            steps = [s["streams"] for s in self.results["steps"] if kind in s and s[kind]["held"]]
            held[kind] = max(steps, default=None)
        self.results["held"] = held
        if self.results["steps"]:
            print(
                f"\nhighest step held (all streams complete and exact, 0 lost or duplicated, gap p99 "
                f"and late+ p99 under 2x the upstream's gap of {1000 / self.args.tps:g} ms = {limit:g} ms):"
            )
            for kind, streams in held.items():
                print(f"  {kind:<7} {'none of the steps' if streams is None else f'{streams} streams'}")
        if "redis" in self.phases:
            self.results["redis_goals"] = goals = self.redis_goals()
            print("\n" + report.REDIS_NOTE)
            print("\nthe Redis store's goals:")
            print("\n".join(report.goal_lines(goals)))
        if self.results["start_cost"] is not None:
            print("\n" + start_cost.NOTE + "\n")
            print("\n".join(start_cost.goal_lines(self.results["start_cost"])))
        for step in self.results["steps"]:
            for kind in self.phases:
                profile = step.get(kind, {}).get("profile")
                if profile and profile.get("samples"):
                    print(
                        f"\nprofile of the {kind} relay's worker at {step['streams']} streams "
                        f"({profile['samples']} samples, {profile['file']}), own time:"
                    )
                    for name, pct in profile["own"][:12]:
                        print(f"  {pct:5.1f}%  {name}")
        path = self.save()
        print(f"\nresults written to {path}")
        if self.args.quick or not self.results["steps"]:
            print("plot skipped (quick run)" if self.args.quick else "plot skipped (no steps)")
        else:
            print(report.plot(self.results, self.out / "bench.png"))

    def redis_goals(self) -> list[dict]:
        """Check the Redis store's goals against the memory store at the largest step it held."""
        steps = [s for s in self.results["steps"] if "redis" in s and "app" in s]
        held = self.results["held"].get("app")
        step = next((s for s in steps if s["streams"] == held), steps[-1] if steps else None)
        goals = []
        if step is not None:
            vs, memory, redis = step["redis_vs_memory"], step["app"], step["redis"]
            where = f"at {step['streams']} streams" + (
                " (the largest step the memory store held)"
                if step["streams"] == held
                else " (the memory store held none: the largest step measured)"
            )
            ratio, ttft = vs["cpu_ratio"], vs["ttft_added_p50_diff_ms"]
            goals.append(
                report.goal(
                    f"relay + Redis CPU per token at most {report.GOAL_CPU_RATIO:g}x "
                    f"the memory store's, {where}",
                    ratio is not None and ratio <= report.GOAL_CPU_RATIO,
                    f"{redis['cpu_us_per_token']} + {redis['redis']['cpu_us_per_token']} = "
                    f"{redis['redis']['relay_plus_redis_us_per_token']} us against "
                    f"{memory['cpu_us_per_token']} us: {ratio}x",
                )
            )
            goals.append(
                report.goal(
                    f"added TTFT p50 within {report.GOAL_TTFT_P50_MS:g} ms of the memory store's, {where}",
                    ttft is not None and ttft <= report.GOAL_TTFT_P50_MS,
                    f"{redis['ttft_added_ms']['p50']} ms against {memory['ttft_added_ms']['p50']} ms: "
                    f"{'-' if ttft is None else f'{ttft:+.3f}'} ms",
                )
            )
        phases = [s["redis"] for s in self.results["steps"] if "redis" in s]
        soak = (self.results["soak"] or {}).get("redis")
        phases += [soak] if soak else []
        lost, dup = sum(f["lost"] for f in phases), sum(f["dup"] for f in phases)
        worker_lost = sum(f["fail_codes"].get("worker_lost", 0) for f in phases)
        goals.append(
            report.goal(
                "0 lost, 0 duplicated, 0 worker_lost, in every Redis-store phase",
                bool(phases) and lost == dup == worker_lost == 0,
                f"{lost} lost, {dup} duplicated, {worker_lost} worker_lost in {len(phases)} phases",
            )
        )
        goal = f"Redis connections per worker at most {report.GOAL_CONNECTIONS_PER_WORKER} at "
        if soak is None or self.results["soak"]["streams"] < report.GOAL_SOAK_STREAMS:
            figures = f"not measured: the soak needs at least {report.GOAL_SOAK_STREAMS} streams (--soak)"
            goals.append(report.goal(goal + f"{report.GOAL_SOAK_STREAMS:,} open streams", False, figures))
        else:
            peak = soak["redis"]["connections_per_worker_peak"]
            goals.append(
                report.goal(
                    goal + f"{self.results['soak']['streams']:,} open streams",
                    peak is not None and peak <= report.GOAL_CONNECTIONS_PER_WORKER,
                    f"peak {peak} per worker ({soak['open_mid']} streams open at mid-window, "
                    f"connected_clients peak {soak['redis']['connected_clients_peak']})",
                )
            )
        return goals


def machine() -> dict:
    """Describe the machine and the versions that the figures depend on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in (
        *("gunicorn", "gevent", "greenlet", "flask", "openai", "pydantic"),
        *("httpx", "fastapi", "uvicorn", "uvloop"),  # the anchors'
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["node"] = node_version()
    try:
        versions["redis (py)"] = importlib.metadata.version("redis")
    except importlib.metadata.PackageNotFoundError:
        versions["redis (py)"] = None
    versions["redis-server"] = redis_server.version()
    npm_openai = NODE_ANCHOR / "node_modules" / "openai" / "package.json"
    versions["openai (npm)"] = json.loads(npm_openai.read_text())["version"] if npm_openai.exists() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _counts(text: str) -> list[int]:
    """Parse a comma-separated list of stream counts ("none" for an empty list: no step)."""
    if text.strip() == "none":
        return []
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 50,200,500, got {text!r}") from None
    if not values or any(not 1 <= v <= 20_000 for v in values):
        raise argparse.ArgumentTypeError(f"each count must be between 1 and 20000, got {text!r}")
    return values


def _relays(text: str) -> list[str]:
    """Parse the relays to measure ("all" for every one), in RELAYS' order; refuse one that cannot run."""
    chosen = (
        set(RELAYS) if text.strip() == "all" else {part.strip() for part in text.split(",") if part.strip()}
    )
    if not chosen or not chosen <= RELAYS.keys():
        raise argparse.ArgumentTypeError(f"expected 'all' or some of {','.join(RELAYS)}, got {text!r}")
    for kind in chosen:
        missing = RELAYS[kind].missing()
        if missing:
            raise argparse.ArgumentTypeError(f"the {kind} relay cannot run here: {missing}")
    return [kind for kind in RELAYS if kind in chosen]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line; ``--quick`` replaces the defaults with a smoke run."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5 and 20 streams, 20 tokens at 100/s, no soak; start cost: 40 streams, a burst of 20",
    )
    parser.add_argument(
        "--steps",
        type=_counts,
        help="concurrent streams per step (default 50,100,200,500,1000,2000); none for no step",
    )
    parser.add_argument("--soak", type=int, help="open streams in the soak, 0 for none (default 5000)")
    parser.add_argument("--tps", type=float, help="upstream tokens per second per stream (default 50)")
    parser.add_argument("--tokens", type=int, help="tokens per answer (default 200)")
    parser.add_argument(
        "--ttft", type=float, default=0.1, help="upstream time to first token (default 0.1 s)"
    )
    parser.add_argument("--soak-interval", type=float, default=8.0, help="seconds between soak tokens")
    parser.add_argument("--soak-window", type=float, default=20.0, help="seconds of steady soak measurement")
    parser.add_argument("--soak-rate", type=float, default=100.0, help="new soak streams per second")
    parser.add_argument(
        "--relays",
        type=_relays,
        default=list(DEFAULT_RELAYS),
        help=(
            f"which relays to measure, of {','.join(RELAYS)}: app,naive (default); 'all' adds the "
            "anchors (bench/anchors/); one of them alone for a quicker look"
        ),
    )
    parser.add_argument(
        "--store",
        choices=("memory", "redis"),
        default="memory",
        help=(
            "redis: also measure the app with its Redis run store, right after its memory store, "
            "against a redis-server that the run starts and stops (default: memory only)"
        ),
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gunicorn workers of the Redis-store phase (needs --store redis; default 1)",
    )
    parser.add_argument(
        "--start-streams",
        type=int,
        help="start-cost step: one-token streams per relay, 0 to skip this phase (default 600)",
    )
    parser.add_argument(
        "--start-concurrency",
        type=int,
        help="start-cost step: of those, how many at a time (default 20; must divide --start-streams)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        help="start-cost step: streams of the burst, 0 to skip this phase (default 400)",
    )
    parser.add_argument(
        "--burst-seconds", type=float, help="start-cost step: the burst starts within this (default 2 s)"
    )
    parser.add_argument("--profile", type=_counts, default=[], help="py-spy the relays at these steps")
    parser.add_argument(
        "--out", default="bench-results", help="folder for results.json, raw/, logs/, bench.png"
    )
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"steps": [5, 20], "soak": 0, "tps": 100.0, "tokens": 20}
        defaults |= {"start_streams": 40, "start_concurrency": 5, "burst": 20, "burst_seconds": 0.5}
    else:
        defaults = {"steps": [50, 100, 200, 500, 1000, 2000], "soak": 5000, "tps": 50.0, "tokens": 200}
        defaults |= {"start_streams": 600, "start_concurrency": 20, "burst": 400, "burst_seconds": 2.0}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 1 <= args.tokens <= 1024:
        parser.error("--tokens must be between 1 and 1024 (the app's default max_tokens)")
    if not 0 < args.tps <= 1000 or not 0 <= args.ttft <= 60:
        parser.error("--tps must be in (0, 1000] and --ttft in [0, 60]")
    if not 0 <= args.soak <= 20_000 or min(args.soak_interval, args.soak_window, args.soak_rate) <= 0:
        parser.error("--soak must be in [0, 20000]; --soak-interval, -window and -rate above 0")
    if not 0 <= args.start_streams <= 20_000 or not 1 <= args.start_concurrency <= 20_000:
        parser.error("--start-streams must be in [0, 20000] and --start-concurrency in [1, 20000]")
    if args.start_streams % args.start_concurrency:
        parser.error(
            f"--start-streams {args.start_streams} must be a multiple of --start-concurrency "
            f"{args.start_concurrency}: each client runs the same number of streams back to back"
        )
    if args.start_streams // args.start_concurrency > loadgen.MAX_ROUNDS:
        parser.error(
            f"--start-streams over --start-concurrency must be at most {loadgen.MAX_ROUNDS}"
            " (streams per client)"
        )
    if not 0 <= args.burst <= 20_000 or not 0 < args.burst_seconds <= 60:
        parser.error("--burst must be in [0, 20000] and --burst-seconds in (0, 60]")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")
    if args.workers > 1 and args.store != "redis":
        parser.error(
            f"--workers {args.workers} needs --store redis: several workers share runs only through "
            "Redis (REDIS_URL); the memory store lives in one worker, and gunicorn refuses more"
        )
    if args.store == "redis" and (missing := redis_server.missing()):
        parser.error(f"--store redis: {missing}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code (0 when every phase ran)."""
    args = parse_args(argv)
    bench = Bench(args)
    # SIGTERM unwinds like Ctrl-C, so that the finally below stops every child.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    bench.say(
        f"bench: steps {args.steps or 'none'}, {args.tokens} tokens at {args.tps:g}/s, "
        f"start cost {args.start_streams} at {args.start_concurrency}, burst {args.burst} in "
        f"{args.burst_seconds:g} s, soak {args.soak}; "
        f"store {args.store}{f', {args.workers} workers' if args.workers > 1 else ''}; out {args.out}"
    )
    try:
        bench.prepare()
        for streams in args.steps:
            if bench.fits(streams, f"step {streams}"):
                bench.step(streams)
        if args.start_streams or args.burst:
            start_cost.run(bench)
        if args.soak and bench.fits(args.soak, f"soak of {args.soak}"):
            bench.soak(args.soak)
    finally:
        bench.stop_all()
    bench.conclude()
    return 0


if __name__ == "__main__":
    sys.exit(main())
