"""The start-cost step: what starting a stream costs a relay, in CPU and in time to the first token.

Where it sits: one step of ``python -m bench.run``, after the concurrency steps and before the
soak, on the same plumbing (bench/run.py's ``Bench``: the fake upstream, each relay fresh and
pinned to the relay core, the load generator and the upstream on the other core, CPU from /proc).
Run it alone with::

    python -m bench.run --steps none --soak 0          # 600 short streams, a burst of 400: ~1 min
    python -m bench.run --steps none --soak 0 --burst 0 --start-streams 1200   # CPU only

The per-token steps say little about a short answer: a stream's set-up and end (the request,
dispatch, validation, the upstream request, the first frames and the last) cost far more than one
token. This step measures them in two phases, each relay in turn, never two at the same time:

1. CPU per stream (``--start-streams``, ``--start-concurrency``): each of C clients runs N/C
   one-token answers back to back (``tokens=1 tps=1000 ttft=0``: the upstream answers at once), so
   the relay always has C streams starting or ending. The figure is the relay worker's CPU
   (utime + stime) over the whole phase, over the streams completed, in microseconds.
2. Burst (``--burst``, ``--burst-seconds``): N streams all started within S seconds, each a normal
   answer (``--tokens`` at ``--tps``), so that the first are still streaming while the last start;
   first directly against the fake upstream, then through each relay. The figure is the time to
   first token the relay adds, percentile by percentile (p50 - p50, p99 - p99), as in the steps.

The relays: ``app`` (as every step runs it: memory store, per-client limits off, metrics on),
``app+limits`` (the same app with its per-client limits on, set far above what the load
generator reaches: bench/processes.py's LIMITS_HIGH), ``naive`` (examples/step1_relay.py), and any
anchor chosen with ``--relays``. Then the goals (report.GOAL_START_*), printed at the end of the run
with the figures: CPU per stream of the app against the naive relay's in the same run, and the
added TTFT p99 of a burst of 400 streams in 2 s.

Deliberate choices:

- One-token answers with no upstream delay, so that nearly all the relay's CPU in phase 1 is the
  streams' start and end, not their tokens, and the phase is short (a few seconds).
- A fixed concurrency rather than a ramp: the relay's core stays busy with starting streams, and
  the figure does not depend on how fast the harness can open connections.
- CPU over the whole phase, not per request: it includes everything the worker does for the
  streams (accepting, the greenlets, garbage collection, closing), which is what a stream costs.
- Each relay serves WARMUP_ROUNDS rounds of phase 1 unmeasured first (its SDK client created, its
  code's first run), as the steps warm each relay up: what a process does once is not a stream's.
- Ratios to the naive relay in the same run, because absolute microseconds move with the machine.
- Only exact streams count: a relay that refuses or cuts streams gets its figures, its errors
  printed, and no goal reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import report
from bench.processes import LIMITS_HIGH, relay_kind

if TYPE_CHECKING:
    from bench.run import Bench

CPU_RAMP = 0.2  # seconds over which the clients of phase 1 start
CPU_SECONDS_PER_STREAM = 0.05  # phase 1's hard limit: this much per stream, plus DEADLINE_MARGIN
WARMUP_ROUNDS = 5  # rounds of phase 1 that each relay serves, unmeasured, before it is measured
BURST_SECONDS_PER_TOKEN = 0.001  # phase 2's: the burst's tokens at this, as slow as the naive relay
DEADLINE_MARGIN = 30.0
HARNESS = ("upstream", "loadgen")  # the processes on the harness core, by their names in a summary

CPU_HEADER = (
    f"{'relay':<11} {'done':>5} {'fail':>4} {'cut':>4}  {'us/stream':>9}  {'x naive':>7}"
    f"  {'streams/s':>9}  {'relay%':>6}  {'harness%':>8}"
)
BURST_HEADER = (
    f"{'relay':<11} {'done':>5} {'fail':>4} {'cut':>4}  {'exact':>5}  {'TTFT p50/p99 ms':>17}"
    f"  {'TTFT+ p50/p99 ms':>17}  {'gap p99':>7}  {'relay%':>6}  {'harness%':>8}"
)
NOTE = f"""\
The start cost: app is the app as every step runs it; app+limits, the same with its per-client
limits on, set far above what the load generator reaches; naive, the baseline
(examples/step1_relay.py); and any anchor of --relays.
us/stream: the relay worker's CPU (utime + stime) over the phase, over the streams completed;
       x naive: the same over the naive relay's (goal for the app: at most {report.GOAL_START_CPU_RATIO:g})
relay%, harness%: CPU of the relay's core and of the harness's (fake upstream + load generator),
       on average over the phase for CPU per stream, the busiest second of it for the burst
TTFT   time to first token at the client; TTFT+: what the relay adds to the upstream's own, measured
       directly (the upstream row), percentile by percentile
exact  every stream complete, its text exact, 0 lost or duplicated"""


def kinds(relays: list[str]) -> list[str]:
    """Return the phases of the step, in table order: the app and app+limits, then the others."""
    return (["app", "app+limits"] if "app" in relays else []) + [k for k in relays if k != "app"]


def cpu_timing(streams: int, concurrency: int) -> dict:
    """Return the load generator's options for phase 1: one-token answers, clients back to back."""
    return {
        "tokens": 1,
        "tps": 1000,
        "ttft": 0,
        "ramp": CPU_RAMP,
        "rounds": streams // concurrency,
        "deadline": round(streams * CPU_SECONDS_PER_STREAM + DEADLINE_MARGIN, 1),
    }


def burst_timing(burst: int, seconds: float, tokens: int, tps: float, ttft: float) -> dict:
    """Return the load generator's options for phase 2: ``burst`` streams, one each, over ``seconds``."""
    stream_seconds = ttft + tokens / tps
    return {
        "tokens": tokens,
        "tps": tps,
        "ttft": ttft,
        "ramp": seconds,
        "rounds": 1,
        "deadline": round(
            seconds + stream_seconds + burst * tokens * BURST_SECONDS_PER_TOKEN + DEADLINE_MARGIN, 1
        ),
    }


# --- figures (pure functions of the load generator's summaries) ------------------------------------------


def _exact(res: dict) -> bool:
    """Every stream of a phase complete with exact text, and no token lost or duplicated."""
    return res["completed"] == res["total_streams"] and res["lost"] == res["dup"] == 0


def cpu_figures(res: dict) -> dict:
    """Figures of one relay in phase 1: CPU per stream, and how busy its core and the harness were."""
    names = report.relay_names(res["cpu_s"])
    cpu, harness = (report.total([res["cpu_s"].get(name) for name in group]) for group in (names, HARNESS))
    done, elapsed = res["completed"], res["elapsed_s"]
    return {
        **report.outcomes(res),
        "total_streams": res["total_streams"],
        "exact": _exact(res),
        "relay_cpu_s": cpu,
        "cpu_us_per_stream": round(cpu * 1e6 / done, 1) if cpu is not None and done else None,
        "streams_per_s": round(done / elapsed, 1) if elapsed else None,
        # Averages over the phase, which is too short for the steps' busiest second.
        "relay_cpu_pct": round(100 * cpu / elapsed, 1) if cpu is not None and elapsed else None,
        "harness_cpu_pct": round(100 * harness / elapsed, 1) if harness is not None and elapsed else None,
        "ttft_ms": res["ttft_ms"],
        "elapsed_s": elapsed,
        "errors": res["errors"],
    }


def burst_figures(res: dict, direct: dict, idle_rss_kb: int, upstream_gap_ms: float) -> dict:
    """Figures of one relay in phase 2: the steps' figures (report.relay_figures), and ``exact``."""
    return {**report.relay_figures(res, direct, idle_rss_kb, upstream_gap_ms), "exact": _exact(res)}


def goals(entry: dict) -> list[dict]:
    """Check the start cost's goals: the app's CPU per stream against naive's, the burst's TTFT p99."""
    cpu, burst, config = entry["cpu"], entry["burst"], entry["config"]
    app, naive = cpu.get("app"), cpu.get("naive")
    goal = (
        f"CPU per stream of the app at most {report.GOAL_START_CPU_RATIO:g}x the naive relay's "
        "in the same run"
    )
    if app is None or naive is None:
        needs = "not measured: needs --start-streams above 0 and the app and naive relays (--relays)"
        found = [report.goal(goal, False, needs)]
    else:
        ratio = entry["cpu_vs_naive"].get("app")
        exact = app["exact"] and naive["exact"]
        found = [
            report.goal(
                goal,
                exact and ratio is not None and ratio <= report.GOAL_START_CPU_RATIO,
                f"{_us(app['cpu_us_per_stream'])} against {_us(naive['cpu_us_per_stream'])}: "
                f"{'-' if ratio is None else f'{ratio:.3f}'}x"
                + ("" if exact else " (not every stream exact: see the errors)"),
            )
        ]
    n, seconds = report.GOAL_BURST_STREAMS, report.GOAL_BURST_SECONDS
    goal = (
        f"added TTFT p99 at most {report.GOAL_BURST_TTFT_P99_MS:g} ms for a burst of {n} streams "
        f"in {seconds:g} s"
    )
    app = burst.get("app")
    if app is None:
        found.append(report.goal(goal, False, "not measured: needs --burst above 0 and the app relay"))
        return found
    added = app["ttft_added_ms"]
    figures = f"p99 {_ms(added['p99'])} (p50 {_ms(added['p50'])})" + (
        "" if app["exact"] else " (not every stream exact: see the errors)"
    )
    if config["burst"] < n or config["burst_seconds"] > seconds:
        figures = (
            f"not judged: this burst was {config['burst']} streams in {config['burst_seconds']:g} s, "
            f"the goal needs at least {n} in at most {seconds:g} s; {figures}"
        )
        found.append(report.goal(goal, False, figures))
    else:
        p99 = added["p99"]
        reached = app["exact"] and p99 is not None and p99 <= report.GOAL_BURST_TTFT_P99_MS
        found.append(report.goal(goal, reached, figures))
    return found


# --- the printed rows ------------------------------------------------------------------------------------


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} us"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def cpu_row(kind: str, f: dict, vs_naive: float | None) -> str:
    """Format one relay's row of phase 1."""
    return (
        f"{kind:<11} {f['completed']:>5} {f['failed']:>4} {f['cut']:>4}"
        f"  {report.num(f['cpu_us_per_stream'], 9)}  {report.num(vs_naive, 7, 3)}"
        f"  {report.num(f['streams_per_s'], 9)}  {report.num(f['relay_cpu_pct'], 6, 0)}"
        f"  {report.num(f['harness_cpu_pct'], 8, 0)}"
    )


def burst_row(kind: str, f: dict) -> str:
    """Format one row of phase 2: the upstream measured directly, or a relay."""
    is_direct = kind == "upstream"
    added = "" if is_direct else report.pair(f["ttft_added_ms"]["p50"], f["ttft_added_ms"]["p99"])
    relay = "" if is_direct else report.num(f["relay_cpu_pct"], 6, 0)
    return (
        f"{kind:<11} {f['completed']:>5} {f['failed']:>4} {f['cut']:>4}  {'yes' if f['exact'] else 'no':>5}"
        f"  {report.pair(f['ttft_ms']['p50'], f['ttft_ms']['p99']):>17}  {added:>17}"
        f"  {report.num(f['gap_ms']['p99'], 7)}  {relay:>6}  {report.num(f['harness_cpu_pct'], 8, 0)}"
    )


def error_lines(phases: dict) -> list[str]:
    """Say what went wrong in each phase that had errors (the load generator's ten most common)."""
    return [
        f"  errors, {kind}: " + "; ".join(f"{n}x {error}" for error, n in f["errors"].items())
        for kind, f in phases.items()
        if f["errors"]
    ]


def goal_lines(entry: dict) -> list[str]:
    """Format the goals' lines, as the run prints them at its end."""
    return ["the start cost's goals:", *report.goal_lines(entry["goals"])]


# --- the phases ------------------------------------------------------------------------------------------


def run(bench: Bench) -> dict:
    """Measure the step (its CPU phase, then its burst), print its rows, and return its results."""
    args = bench.args
    entry: dict = {
        "config": {
            "streams": args.start_streams,
            "concurrency": args.start_concurrency,
            "rounds": args.start_streams // args.start_concurrency if args.start_streams else 0,
            "answer": "one token, at once (tokens=1 tps=1000 ttft=0)",
            "burst": args.burst,
            "burst_seconds": args.burst_seconds,
            "burst_answer": {"tokens": args.tokens, "tps": args.tps, "ttft": args.ttft},
            "relays": kinds(args.relays),
            "limits_env": dict(LIMITS_HIGH),
        },
        "cpu": {},
        "cpu_vs_naive": {},
        "burst": {},
        "goals": [],
    }
    bench.results["start_cost"] = entry
    if "app" in args.relays:
        limits = ", ".join(f"{name}={value}" for name, value in LIMITS_HIGH.items())
        bench.note(
            f"start cost: app+limits is the app with its per-client limits on ({limits}): far "
            "above what the load generator, one client, starts or holds, so that none is refused"
        )
    if args.start_streams and bench.fits(args.start_concurrency, "start cost, CPU per stream"):
        measure_cpu(bench, entry)
    if args.burst and bench.fits(args.burst, f"start cost, burst of {args.burst}"):
        measure_burst(bench, entry)
    entry["goals"] = goals(entry)
    bench.save()
    return entry


def measure_cpu(bench: Bench, entry: dict) -> None:
    """Phase 1: many one-token answers at a fixed concurrency through each relay; CPU per stream."""
    args, cpu = bench.args, entry["cpu"]
    timing = cpu_timing(args.start_streams, args.start_concurrency)
    # Each relay first serves WARMUP_ROUNDS rounds, unmeasured: what every relay does once, on its
    # first requests (creating its SDK client, its first validation, its code's first run), is not
    # what a stream costs.
    warmup = {**timing, "rounds": WARMUP_ROUNDS}
    for kind in entry["config"]["relays"]:
        bench.say(
            f"start cost: {args.start_streams} one-token streams, {args.start_concurrency} at a time, "
            f"{kind} relay ({relay_kind(kind).what}) ..."
        )
        res, _idle, _profile, _redis = bench.load_relay(
            kind, f"start-cpu-{kind}", args.start_concurrency, timing, heartbeat=3600, warmup=warmup
        )
        cpu[kind] = cpu_figures(res)
        bench.save()
    naive = cpu.get("naive", {}).get("cpu_us_per_stream")
    entry["cpu_vs_naive"] = {
        kind: report.ratio(f["cpu_us_per_stream"], naive) for kind, f in cpu.items() if kind != "naive"
    }
    print(
        f"\nstart cost, CPU per stream: {args.start_streams} one-token answers, "
        f"{args.start_concurrency} at a time ({timing['rounds']} each, back to back)",
        CPU_HEADER,
        *(cpu_row(kind, f, entry["cpu_vs_naive"].get(kind)) for kind, f in cpu.items()),
        *error_lines(cpu),
        "",
        sep="\n",
        flush=True,
    )


def measure_burst(bench: Bench, entry: dict) -> None:
    """Phase 2: a burst of streams started within a few seconds, the upstream's first, then each relay's."""
    args, burst = bench.args, entry["burst"]
    timing = burst_timing(args.burst, args.burst_seconds, args.tokens, args.tps, args.ttft)
    what = (
        f"{args.burst} streams started within {args.burst_seconds:g} s, "
        f"{args.tokens} tokens at {args.tps:g}/s each"
    )
    bench.say(f"start cost: burst of {what}: the upstream directly ...")
    res = bench.load_direct("start-burst-upstream", args.burst, timing)
    burst["upstream"] = {**report.direct_figures(res), "exact": _exact(res)}
    for kind in entry["config"]["relays"]:
        bench.say(f"start cost: burst of {args.burst}, {kind} relay ({relay_kind(kind).what}) ...")
        res, idle, _profile, _redis = bench.load_relay(
            kind, f"start-burst-{kind}", args.burst, timing, heartbeat=3600
        )
        burst[kind] = burst_figures(res, burst["upstream"], idle, 1000 / args.tps)
        bench.save()
    print(
        f"\nstart cost, burst: {what}",
        BURST_HEADER,
        *(burst_row(kind, f) for kind, f in burst.items()),
        *error_lines(burst),
        "",
        sep="\n",
        flush=True,
    )
