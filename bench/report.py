"""Turn the load generator's raw summaries into the benchmark's figures, table rows, plot and profile.

Used by bench/run.py. Pure functions of plain dicts (no processes, no sockets), so the figures can
be recomputed from a saved results.json.

The figures, per step and per relay (see docs/performance.md):

- TTFT added: the relay's time to first token minus the upstream's own, measured directly against
  the fake upstream at the same concurrency, percentile by percentile (p50 - p50, p99 - p99).
- gap: the time between two token events at the client, over every gap of every stream.
- CPU per token: utime + stime of the gunicorn worker over the step, over the tokens it relayed.
- last token late: how long after the upstream's schedule (its first-token time, then one token
  every 1/tps) a stream's last token arrives, minus the same for the upstream measured directly.
  Gaps alone can hide a relay that has fallen behind: when it sends several waiting tokens in one
  write, most gaps at the client are 0, and the p99 of all gaps stays small.
- held: every stream complete with exact text, 0 lost or duplicated, gap p99 under twice the
  upstream's gap, and the last token late by less than twice the upstream's gap (p99).
- RSS per stream: the worker's RSS with the most streams open, minus its RSS idle just before the
  step (after warm-up), over the streams open at that moment.
- CPU% of the relay, the upstream and the load generator: the busiest second of the step, so that
  a saturated process shows as one. The upstream and the load generator share one core: the harness
  is SATURATED when the two together reach 90% of it, and then it may be what limits the step.
  In a Redis-store phase, redis-server runs on that core too, and counts in the harness's CPU.

With ``--store redis`` (bench/redis_server.py says what each counter means), the app's Redis-store
phase also gets, beside the memory store's figures of the same step:

- Redis CPU per token: utime + stime of redis-server over the step, over the tokens relayed; and
  the sum of the relay's and Redis's, as a ratio to the memory store's relay CPU per token;
- commands per token (every command Redis ran, those inside the store's Lua scripts included),
  EVALSHA calls per token (the scripts the store called), and reads per token (about one per round
  trip, counted on the server);
- connections: the peak of ``connected_clients``, and the most any one worker held (from /proc);
- ``fail`` events by code (``worker_lost`` must be 0). With several workers, the relay's CPU and RSS
  are those of all its workers together.

The start-cost step's figures (CPU per stream, the burst's added TTFT) and its goals are
bench/start_cost.py's; the goals' constants are here, beside the others.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

# The Redis store's goals, against the memory store at the largest step it holds (docs/performance.md):
# here, since the report prints them; bench/run.py checks the figures against them.
GOAL_CPU_RATIO = 1.5
GOAL_TTFT_P50_MS = 1.0
GOAL_CONNECTIONS_PER_WORKER = 8
GOAL_SOAK_STREAMS = 1000
# The start cost's goals (bench/start_cost.py checks them): the app's worker CPU per stream at most
# this times the naive relay's in the same run, and the time to first token it adds at p99 in a
# burst of GOAL_BURST_STREAMS streams started within GOAL_BURST_SECONDS.
GOAL_START_CPU_RATIO = 0.4
GOAL_BURST_TTFT_P99_MS = 20.0
GOAL_BURST_STREAMS = 400
GOAL_BURST_SECONDS = 2.0

SATURATED = 90.0  # percent of one core
# Commands that the harness sends to redis-server itself (bench/redis_server.py), not the store.
HARNESS_COMMANDS = frozenset({"info", "flushall"})


def goal(text: str, reached: bool, figures: str) -> dict:
    """Return one goal's result: what it is, whether it was reached, and the figures that say so."""
    return {"goal": text, "reached": reached, "figures": figures}


def goal_lines(goals: list[dict]) -> list[str]:
    """Format goals as the run prints them at its end: reached or NOT reached, then the figures."""
    return [
        f"  {'reached' if g['reached'] else 'NOT reached':<12} {g['goal']}: {g['figures']}" for g in goals
    ]


def peak_cpu_pct(samples: list[list], *names: str, span: float = 1.0) -> float | None:
    """Return the highest CPU% of the named processes together over any ``span`` seconds."""
    points = [
        (s[0], sum(s[3][name] for name in names))
        for s in samples
        if all(s[3].get(name) is not None for name in names)
    ]
    best = None
    j = 0
    for i, (t, cpu) in enumerate(points):
        j = max(j, i)
        while j < len(points) and points[j][0] - t < span:
            j += 1
        if j == len(points):
            break
        t2, cpu2 = points[j]
        pct = (cpu2 - cpu) / (t2 - t) * 100
        best = pct if best is None else max(best, pct)
    if best is None and len(points) >= 2:  # a phase shorter than the span: use all of it
        (t, cpu), (t2, cpu2) = points[0], points[-1]
        best = (cpu2 - cpu) / (t2 - t) * 100 if t2 > t else None
    return None if best is None else round(best, 1)


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def total(values: list) -> float | None:
    """Sum values, or None if any is missing (a process that was gone)."""
    return None if not values or any(v is None for v in values) else sum(values)


def relay_names(readings: dict) -> list[str]:
    """Return the relay's workers among a phase's watched names: "relay", then "relay-2" and on."""
    return sorted((n for n in readings if n == "relay" or n.startswith("relay-")), key=len)


def outcomes(res: dict) -> dict:
    """How a phase's streams ended, whether any token was lost or duplicated, and the fail codes."""
    return {
        **{name: res[name] for name in ("completed", "failed", "cut", "lost", "dup")},
        "fail_codes": res.get("fail_codes", {}),
    }


def _harness_cpu(res: dict) -> dict:
    """Peak CPU of the fake upstream, of the load generator, and of the harness's whole core.

    In a Redis-store phase, redis-server shares that core, so it counts in the harness's figure.
    """
    samples = res["samples"]
    on_core = ("upstream", "loadgen", *(["redis"] if "redis" in res["cpu_s"] else []))
    return {
        "upstream_cpu_pct": peak_cpu_pct(samples, "upstream"),
        "loadgen_cpu_pct": peak_cpu_pct(samples, "loadgen"),
        "harness_cpu_pct": peak_cpu_pct(samples, *on_core),
    }


def direct_figures(res: dict) -> dict:
    """Figures of the upstream measured directly: its own TTFT and gaps, and the harness's CPU."""
    return {
        **outcomes(res),
        "ttft_ms": res["ttft_ms"],
        "gap_ms": res["gap_ms"],
        "last_token_late_ms": res["last_token_late_ms"],
        **_harness_cpu(res),
        "errors": res["errors"],
    }


def relay_figures(res: dict, direct: dict, idle_rss_kb: int, upstream_gap_ms: float) -> dict:
    """Figures of one relay at one step, from the load generator's summary."""
    tokens = res["tokens_received"]
    names = relay_names(res["cpu_s"])  # one worker, or several with --workers
    cpu = total([res["cpu_s"].get(name) for name in names])
    peak_rss = total([res["rss_kb_at_peak"].get(name) for name in names])
    open_streams = res["peak_open"]
    figures = {
        **outcomes(res),
        "ttft_ms": res["ttft_ms"],
        "ttft_added_ms": {
            "p50": _sub(res["ttft_ms"]["p50"], direct["ttft_ms"]["p50"]),
            "p99": _sub(res["ttft_ms"]["p99"], direct["ttft_ms"]["p99"]),
        },
        "gap_ms": res["gap_ms"],
        "last_token_late_added_ms": {
            "p50": _sub(res["last_token_late_ms"]["p50"], direct["last_token_late_ms"]["p50"]),
            "p99": _sub(res["last_token_late_ms"]["p99"], direct["last_token_late_ms"]["p99"]),
        },
        "tokens_relayed": tokens,
        "relay_cpu_s": cpu,
        "cpu_us_per_token": round(cpu * 1e6 / tokens, 1) if cpu is not None and tokens else None,
        "idle_rss_kb": idle_rss_kb,
        "peak_rss_kb": peak_rss,
        "open_at_peak": open_streams,
        "rss_kb_per_stream": round((peak_rss - idle_rss_kb) / open_streams, 1)
        if peak_rss is not None and open_streams
        else None,
        "relay_cpu_pct": peak_cpu_pct(res["samples"], *names),
        **_harness_cpu(res),
        "elapsed_s": res["elapsed_s"],
        "errors": res["errors"],
    }
    gap_p99 = res["gap_ms"]["p99"]
    late_p99 = figures["last_token_late_added_ms"]["p99"]
    figures["held"] = (
        res["completed"] == res["total_streams"]
        and res["lost"] == 0
        and res["dup"] == 0
        and gap_p99 is not None
        and gap_p99 < 2 * upstream_gap_ms
        and late_p99 is not None
        and late_p99 < 2 * upstream_gap_ms
    )
    return figures


def ratio(ours: float | None, base: float | None) -> float | None:
    if ours is None or base is None or base <= 0:
        return None
    return round(ours / base, 3)


def soak_figures(res: dict, idle_rss_kb: int) -> dict:
    """Figures of one relay in the soak: RSS per open stream, and CPU over the steady window."""
    window = res["window"] or {}
    cpu_s, rss_kb_mid = window.get("cpu_s") or {}, window.get("rss_kb_mid") or {}
    relay_cpu = total([cpu_s.get(name) for name in relay_names(cpu_s)])
    seconds = window.get("seconds") or 0
    open_mid = window.get("open_mid") or 0
    rss_mid = total([rss_kb_mid.get(name) for name in relay_names(rss_kb_mid)])
    return {
        **outcomes(res),
        "pings": res["pings"],
        "open_mid": open_mid,
        "idle_rss_kb": idle_rss_kb,
        "rss_kb_mid": rss_mid,
        "rss_kb_per_stream": round((rss_mid - idle_rss_kb) / open_mid, 1) if rss_mid and open_mid else None,
        "window_s": seconds,
        "relay_cpu_pct": round(100 * relay_cpu / seconds, 1) if relay_cpu is not None and seconds else None,
        "cpu_us_per_stream_second": round(1e6 * relay_cpu / (open_mid * seconds), 1)
        if relay_cpu is not None and open_mid and seconds
        else None,
        "token_events_in_window": window.get("token_events"),
        **_harness_cpu(res),
        "errors": res["errors"],
    }


def soak_line(kind: str, f: dict) -> str:
    """Format the soak's result for one relay."""
    per_stream = "-" if f["rss_kb_per_stream"] is None else f"{f['rss_kb_per_stream']:.1f} KB"
    cpu = "-" if f["relay_cpu_pct"] is None else f"{f['relay_cpu_pct']:.1f}% of a core"
    return (
        f"soak {kind}: {f['completed']} done, {f['failed']} failed, {f['cut']} cut, {f['lost']} lost, "
        f"{f['dup']} dup; {f['open_mid']} open at mid-window: RSS {per_stream} per stream; CPU {cpu} "
        f"over {f['window_s']:.0f} s ({f['cpu_us_per_stream_second']} us per stream-second); "
        f"{f['pings']} heartbeats seen"
    )


# --- the Redis store ---------------------------------------------------------------------------------------


def redis_figures(
    res: dict, before: dict, after: dict, peaks: dict, idle_rss_kb: int | None, relay_us: float | None
) -> dict:
    """Figures of redis-server over one Redis-store phase: CPU, commands, reads, connections, memory.

    ``before`` and ``after`` are its counters around the phase (RedisServer.counters()), ``peaks``
    what bench/run.py sampled while the phase ran (``clients``: connected_clients; ``by_worker``:
    each worker's own connections), ``relay_us`` the relay's CPU per token in the same phase.
    """
    tokens = res["tokens_received"]
    cpu = res["cpu_s"].get("redis")
    calls = {
        name: n - before["commands"].get(name, 0)
        for name, n in after["commands"].items()
        if name not in HARNESS_COMMANDS and n > before["commands"].get(name, 0)
    }
    calls = dict(sorted(calls.items(), key=lambda item: -item[1]))
    reads = after["reads"] - before["reads"] - (after["own_reads"] - before["own_reads"])

    def per_token(n: float | None) -> float | None:
        return round(n / tokens, 3) if n is not None and tokens else None

    cpu_us = round(cpu * 1e6 / tokens, 1) if cpu is not None and tokens else None
    peak_rss = res["rss_kb_at_peak"].get("redis")
    by_worker = {str(pid): n for pid, n in peaks["by_worker"].items()}
    return {
        "cpu_s": cpu,
        "cpu_us_per_token": cpu_us,
        "relay_plus_redis_us_per_token": total([relay_us, cpu_us]),
        "cpu_pct": peak_cpu_pct(res["samples"], "redis"),
        "commands": calls,
        "commands_per_token": per_token(sum(calls.values())),
        "evalsha_per_token": per_token(calls.get("evalsha", 0)),
        "reads": reads,
        "reads_per_token": per_token(reads),
        "connected_clients_peak": peaks["clients"],
        "connections_per_worker_peak": max(by_worker.values(), default=None),
        "connections_by_worker": by_worker,
        "idle_rss_kb": idle_rss_kb,
        "peak_rss_kb": peak_rss,
        "rss_kb_per_stream": round((peak_rss - idle_rss_kb) / res["peak_open"], 1)
        if peak_rss is not None and idle_rss_kb is not None and res["peak_open"]
        else None,
    }


def redis_soak_figures(res: dict, before: dict, after: dict, peaks: dict, idle_rss_kb: int | None) -> dict:
    """Figures of redis-server over the soak's Redis-store phase, with its CPU over the steady window."""
    figures = redis_figures(res, before, after, peaks, idle_rss_kb, None)
    window = res["window"] or {}
    cpu, seconds = (window.get("cpu_s") or {}).get("redis"), window.get("seconds") or 0
    figures["window_cpu_pct"] = round(100 * cpu / seconds, 1) if cpu is not None and seconds else None
    rss_mid, open_mid = (window.get("rss_kb_mid") or {}).get("redis"), window.get("open_mid") or 0
    figures["rss_kb_per_stream"] = (
        round((rss_mid - idle_rss_kb) / open_mid, 1) if rss_mid and idle_rss_kb and open_mid else None
    )
    return figures


def redis_vs_memory(memory: dict, redis: dict) -> dict:
    """The Redis store's figures against the memory store's at the same step (the goals' terms)."""
    extra = redis["redis"]
    return {
        "cpu_ratio": ratio(extra["relay_plus_redis_us_per_token"], memory["cpu_us_per_token"]),
        "relay_cpu_ratio": ratio(redis["cpu_us_per_token"], memory["cpu_us_per_token"]),
        "ttft_added_p50_diff_ms": _sub(redis["ttft_added_ms"]["p50"], memory["ttft_added_ms"]["p50"]),
        "ttft_added_p99_diff_ms": _sub(redis["ttft_added_ms"]["p99"], memory["ttft_added_ms"]["p99"]),
        "gap_p99_ratio": ratio(redis["gap_ms"]["p99"], memory["gap_ms"]["p99"]),
    }


REDIS_HEADER = (
    f"{'streams':>7}  {'store':<6}  {'relay us/tok':>12}  {'redis us/tok':>12}  {'sum':>6}  {'x mem':>5}"
    f"  {'TTFT+ p50/p99 ms':>17}  {'gap p99':>7}  {'KB/stream':>9}  {'cmds/tok':>8}  {'evalsha/tok':>11}"
    f"  {'reads/tok':>9}  {'clients':>7}  {'per wkr':>7}  fail codes"
)
REDIS_NOTE = f"""\
The app with its Redis run store (redis) beside the app with its memory store (memory), same step,
same load; redis-server runs on the harness core, so the relay's core measures the relay alone.
relay us/tok: the app's workers' CPU per token; redis us/tok: redis-server's; sum: both; x mem:
       the sum over the memory store's relay CPU per token (goal: at most {GOAL_CPU_RATIO:g})
cmds/tok: commands Redis ran per token (INFO commandstats), those run inside the store's Lua
       scripts included; evalsha/tok: the scripts the store called (one per write batch, for all of its runs)
reads/tok: times Redis read a client socket per token (INFO stats total_reads_processed, the
       harness's own taken off): about one per round trip (a pipeline over 16 KB takes more)
clients: peak connected_clients while the step ran; per wkr: the most any worker held (/proc)
fail codes: every `fail` event the load generator saw, by code (worker_lost must be 0)"""


def _codes(codes: dict) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(codes.items())) or "none"


def redis_rows(streams: int, memory: dict | None, redis: dict) -> list[str]:
    """Format the memory store's row (if measured) and the Redis store's, with the Redis figures."""
    rows = []
    extra = redis["redis"]
    for store, f in (("memory", memory), ("redis", redis)):
        if f is None:
            continue
        mine = extra if store == "redis" else {}
        total = mine.get("relay_plus_redis_us_per_token", f["cpu_us_per_token"])
        vs = ratio(total, memory["cpu_us_per_token"]) if memory else None
        rows.append(
            f"{streams:>7}  {store:<6}  {num(f['cpu_us_per_token'], 12)}"
            f"  {num(mine.get('cpu_us_per_token'), 12)}  {num(total, 6)}  {num(vs, 5, 2)}"
            f"  {pair(f['ttft_added_ms']['p50'], f['ttft_added_ms']['p99']):>17}"
            f"  {num(f['gap_ms']['p99'], 7)}  {num(f['rss_kb_per_stream'], 9)}"
            f"  {num(mine.get('commands_per_token'), 8, 2)}  {num(mine.get('evalsha_per_token'), 11, 2)}"
            f"  {num(mine.get('reads_per_token'), 9, 2)}  {num(mine.get('connected_clients_peak'), 7, 0)}"
            f"  {num(mine.get('connections_per_worker_peak'), 7, 0)}  {_codes(f['fail_codes'])}"
        )
    return rows


def redis_soak_line(f: dict) -> str:
    """Format the Redis figures of the soak's Redis-store phase."""
    extra = f["redis"]
    cpu = "-" if extra["window_cpu_pct"] is None else f"{extra['window_cpu_pct']:.1f}% of a core"
    per_stream = "-" if extra["rss_kb_per_stream"] is None else f"{extra['rss_kb_per_stream']:.1f} KB"
    return (
        f"soak redis: Redis connections per worker, peak {extra['connections_per_worker_peak']} "
        f"(goal: at most {GOAL_CONNECTIONS_PER_WORKER}), "
        f"connected_clients peak {extra['connected_clients_peak']}, with "
        f"{f['open_mid']} streams open; redis-server {cpu} over the window, {per_stream} per stream; "
        f"fail codes: {_codes(f['fail_codes'])}"
    )


def ratios(app: dict, other: dict) -> dict:
    """Every figure of the app as a ratio to another relay's (below 1 is better for the app)."""
    return {
        "ttft_added_p50": ratio(app["ttft_added_ms"]["p50"], other["ttft_added_ms"]["p50"]),
        "ttft_added_p99": ratio(app["ttft_added_ms"]["p99"], other["ttft_added_ms"]["p99"]),
        "gap_p50": ratio(app["gap_ms"]["p50"], other["gap_ms"]["p50"]),
        "gap_p99": ratio(app["gap_ms"]["p99"], other["gap_ms"]["p99"]),
        "last_token_late_added_p99": ratio(
            app["last_token_late_added_ms"]["p99"], other["last_token_late_added_ms"]["p99"]
        ),
        "cpu_us_per_token": ratio(app["cpu_us_per_token"], other["cpu_us_per_token"]),
        "rss_kb_per_stream": ratio(app["rss_kb_per_stream"], other["rss_kb_per_stream"]),
    }


# --- the printed table ------------------------------------------------------------------------------------

HEADER = (
    f"{'streams':>7}  {'relay':<11} {'done':>5} {'fail':>4} {'cut':>4} {'lost':>4} {'dup':>4}"
    f"  {'TTFT+ p50/p99 ms':>17}  {'gap p50/p99 ms':>15}  {'late+ p99':>9}  {'us/token':>8}"
    f"  {'KB/stream':>9}  {'relay%':>6}  {'upstream%':>9}  {'loadgen%':>8}  {'harness%':>12}  held"
)
NOTE = """\
Each of the N clients of a step runs two streams back to back (done counts them all).
TTFT+  time to first token that the relay adds to the upstream's own (the upstream row: its own)
gap    time between two token events at the client
late+  how much later than directly from the upstream a stream's last token arrives (upstream row:
       its own lateness against the schedule)
us/token: relay worker CPU per relayed token; KB/stream: worker RSS per open stream
CPU%   the busiest second of the phase; harness%: upstream + load generator, which share a core;
       SAT: 90% of a core or more, when the harness may be what limits the step
held   all complete and exact, 0 lost or duplicated, gap p99 and late+ p99 under 2x the upstream gap
app/X  the app's figures as ratios to relay X's (the baseline, naive, and any anchor measured):
       below 1, the app does better"""


def num(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def pair(a: float | None, b: float | None, digits: int = 1) -> str:
    left = "-" if a is None else f"{a:.{digits}f}"
    right = "-" if b is None else f"{b:.{digits}f}"
    return f"{left}/{right}"


def _pct(value: float | None) -> str:
    if value is None:
        return f"{'-':>12}"
    return f"{value:>8.0f}{' SAT' if value >= SATURATED else '    '}"


def row(streams: int, name: str, f: dict) -> str:
    """Format one table row for a relay (or for the upstream measured directly)."""
    is_direct = name == "upstream"
    ttft = f["ttft_ms"] if is_direct else f["ttft_added_ms"]
    late = f["last_token_late_ms"] if is_direct else f["last_token_late_added_ms"]
    held = "" if is_direct else ("yes" if f["held"] else "no")
    return (
        f"{streams:>7}  {name:<11} {f['completed']:>5} {f['failed']:>4} {f['cut']:>4}"
        f" {f['lost']:>4} {f['dup']:>4}  {pair(ttft['p50'], ttft['p99']):>17}"
        f"  {pair(f['gap_ms']['p50'], f['gap_ms']['p99']):>15}  {num(late['p99'], 9)}"
        f"  {num(f.get('cpu_us_per_token'), 8)}  {num(f.get('rss_kb_per_stream'), 9)}"
        f"  {num(f.get('relay_cpu_pct'), 6, 0)}  {num(f['upstream_cpu_pct'], 9, 0)}"
        f"  {num(f['loadgen_cpu_pct'], 8, 0)}  {_pct(f['harness_cpu_pct'])}  {held}"
    )


def ratio_row(streams: int, other: str, r: dict) -> str:
    """Format the app's ratios to another relay under the relays' rows."""
    return (
        f"{streams:>7}  {'app/' + other:<11} {'':>5} {'':>4} {'':>4} {'':>4} {'':>4}"
        f"  {pair(r['ttft_added_p50'], r['ttft_added_p99'], 2):>17}"
        f"  {pair(r['gap_p50'], r['gap_p99'], 2):>15}  {num(r['last_token_late_added_p99'], 9, 2)}"
        f"  {num(r['cpu_us_per_token'], 8, 2)}  {num(r['rss_kb_per_stream'], 9, 2)}"
    )


# --- the plot ---------------------------------------------------------------------------------------------


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def plot(results: dict, path: Path) -> str:
    """Draw gap p99, last-token lateness and CPU per token against concurrency, for every relay.

    A hollow marker is a step the relay did not hold. The gap panel is the benchmark's headline
    figure (docs/performance.md); the lateness panel is beside it because a relay that has fallen
    behind and sends waiting tokens in one write shows small gaps (most are 0) while its tokens
    arrive seconds late.
    """
    try:
        import matplotlib
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -r bench/requirements.txt)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["steps"]
    limit = 2 * 1000 / results["config"]["tps"]
    fig, (gap_ax, late_ax, cpu_ax) = plt.subplots(1, 3, figsize=(15, 4.4))
    styles = {
        "app": ("tab:blue", "o", "this app"),
        "redis": ("tab:cyan", "P", "this app, Redis store (relay CPU)"),
        "naive": ("tab:red", "s", "naive baseline"),
        "lines": ("tab:orange", "^", "anchor: Flask + httpx lines"),
        "fastapi": ("tab:green", "D", "anchor: FastAPI + AsyncOpenAI"),
        "node": ("tab:purple", "v", "anchor: Node + openai npm"),
    }
    for kind, (color, marker, label) in styles.items():
        points = [(s["streams"], s[kind]) for s in steps if kind in s]
        if not points:
            continue  # not measured in this run
        xs = [n for n, _ in points]
        panels = (
            (gap_ax, [f["gap_ms"]["p99"] for _, f in points]),
            (late_ax, [f["last_token_late_added_ms"]["p99"] for _, f in points]),
            (cpu_ax, [f["cpu_us_per_token"] for _, f in points]),
        )
        for ax, ys in panels:
            ax.plot(xs, [_nan(y) for y in ys], color=color, label=label)
            for x, y, (_, f) in zip(xs, ys, points, strict=True):
                face = color if f["held"] else "white"
                ax.plot([x], [_nan(y)], marker=marker, color=color, markerfacecolor=face)
    with_redis = [(s["streams"], s["redis"]) for s in steps if "redis" in s]
    if with_redis:
        ys = [_nan(f["redis"]["relay_plus_redis_us_per_token"]) for _, f in with_redis]
        xs = [n for n, _ in with_redis]
        cpu_ax.plot(xs, ys, color="tab:cyan", linestyle="--", label="Redis store: relay + redis-server CPU")
        for x, y, (_, f) in zip(xs, ys, with_redis, strict=True):
            face = "tab:cyan" if f["held"] else "white"
            cpu_ax.plot([x], [y], marker="P", color="tab:cyan", markerfacecolor=face)
    direct = [(s["streams"], s["upstream"]["gap_ms"]["p99"]) for s in steps if "upstream" in s]
    gap_ax.plot(*zip(*direct, strict=True), linestyle=":", color="gray", marker=".", label="upstream direct")
    for ax in (gap_ax, late_ax):
        ax.axhline(
            limit, color="black", linewidth=0.8, linestyle="--", label=f"2x upstream gap ({limit:g} ms)"
        )
    gap_ax.set(ylabel="inter-token gap p99 at the client (ms)")
    late_ax.set(yscale="symlog", ylabel="last token later than direct, p99 (ms)")
    late_ax.set_ylim(bottom=0)  # below 0 only when the direct phase was itself late (harness saturated)
    cpu_ax.set(ylabel="CPU per relayed token (us)")
    cpu_ax.set_ylim(bottom=0)
    for ax in (gap_ax, late_ax, cpu_ax):
        ax.set(xscale="log", xlabel="concurrent streams")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    config = results["config"]
    redis = "; redis-server on the harness core" if with_redis else ""
    fig.suptitle(
        f"each relay on one core (this app: one gevent worker){redis}; upstream {config['tps']:g} tokens/s, "
        f"{config['tokens']} tokens per answer; hollow: step not held "
        f"({results['machine']['cpu']}, {results['machine']['cores']} cores)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


# --- the profile ------------------------------------------------------------------------------------------


def profile_summary(path: Path, top: int = 15) -> dict:
    """Summarise py-spy's raw (collapsed stacks) output: top functions by own and inclusive time."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)

    def table(counter: collections.Counter[str]) -> list[list]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    return {"samples": total, "own": table(own), "inclusive": table(inclusive)} if total else {"samples": 0}
