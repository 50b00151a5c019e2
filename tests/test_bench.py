"""The benchmark works: its smoke mode runs end to end and every stream arrives whole.

``python -m bench.run --quick`` starts the fake upstream and both relays under gunicorn, drives a
few streams through each, runs a tiny start-cost step (one-token streams, then a burst, through the
app, the app with its limits on, and the naive relay), and writes results.json; with ``--relays``
it runs the anchors too (under gunicorn, uvicorn and node); with ``--store redis`` it measures the
app's Redis run store beside its memory store, against a redis-server that it starts and always
stops. ``--steps none --soak 0`` runs the start-cost step alone.
No timing is asserted: a test suite on a shared machine cannot hold figures; the benchmark reports
them. Only exact counts are checked.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require
from redis_helpers import require_redis_server

from bench import report, start_cost
from bench.processes import RELAYS
from bench.procfs import connections_to
from bench.run import parse_args

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ["lines", "fastapi", "node"]
# The start-cost step is covered by the quick run of both relays; the other runs skip it, to stay short.
NO_START_COST = ("--start-streams", "0", "--burst", "0")


def _run_quick(out: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``bench.run --quick`` with ``options``; return the process and its results.json.

    The run gets a temporary directory of its own, which must be empty after it: each gunicorn it
    started made its metrics directory there, and must have been stopped so that it removed it.
    """
    temporary = out / "tmp"
    temporary.mkdir(parents=True)
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *options],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(temporary)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert list(temporary.iterdir()) == []
    return run, json.loads((out / "results.json").read_text())


def _assert_whole(step: dict, phase: str, tokens: int) -> None:
    """Every stream of the phase completed, exact, with every token relayed."""
    total = step["streams"] * step["rounds"]
    figures = step[phase]
    assert (figures["completed"], figures["failed"], figures["cut"]) == (total, 0, 0), (
        phase,
        figures["errors"],
    )
    assert (figures["lost"], figures["dup"]) == (0, 0), phase
    if phase != "upstream":
        assert figures["tokens_relayed"] == total * tokens, phase


def test_bench_quick_runs_both_relays_and_loses_nothing(tmp_path):
    run, results = _run_quick(tmp_path)
    assert [step["streams"] for step in results["steps"]] == [5, 20]
    for step in results["steps"]:
        for phase in ("upstream", "app", "naive"):
            _assert_whole(step, phase, results["config"]["tokens"])
        assert list(step["ratios"]) == ["naive"]
        assert set(step["ratios"]["naive"]) >= {"cpu_us_per_token", "gap_p99", "ttft_added_p99"}
    assert results["soak"] is None
    assert "highest step held" in run.stdout
    _assert_start_cost(run.stdout, results["start_cost"])


def _assert_start_cost(stdout: str, entry: dict) -> None:
    """The quick start-cost step: every stream of every phase whole, its rows, and its two goals."""
    config = entry["config"]
    assert (config["streams"], config["concurrency"], config["rounds"]) == (40, 5, 8)
    assert (config["burst"], config["burst_seconds"]) == (20, 0.5)
    assert config["limits_env"] == {"RATE_LIMIT": "1000000/minute", "MAX_RUNS_PER_CLIENT": "100000"}
    assert list(entry["cpu"]) == ["app", "app+limits", "naive"]
    for kind, f in entry["cpu"].items():
        assert (f["completed"], f["failed"], f["cut"], f["exact"]) == (40, 0, 0, True), (kind, f["errors"])
        # CPU is counted in clock ticks, which a smoke run may not fill: present, not positive.
        assert f["cpu_us_per_stream"] >= 0, kind
    assert list(entry["cpu_vs_naive"]) == ["app", "app+limits"]
    assert list(entry["burst"]) == ["upstream", "app", "app+limits", "naive"]
    for kind, f in entry["burst"].items():
        assert (f["completed"], f["failed"], f["cut"], f["exact"]) == (20, 0, 0, True), (kind, f["errors"])
    for kind in ("app", "app+limits", "naive"):
        assert entry["burst"][kind]["tokens_relayed"] == 20 * 20, kind
    assert "RATE_LIMIT=1000000/minute, MAX_RUNS_PER_CLIENT=100000" in stdout
    lines = stdout.splitlines()
    cpu = lines.index(start_cost.CPU_HEADER)
    assert [line.split()[:4] for line in lines[cpu + 1 : cpu + 4]] == [
        [kind, "40", "0", "0"] for kind in ("app", "app+limits", "naive")
    ]
    burst = lines.index(start_cost.BURST_HEADER)
    assert [line.split()[:5] for line in lines[burst + 1 : burst + 5]] == [
        [kind, "20", "0", "0", "yes"] for kind in ("upstream", "app", "app+limits", "naive")
    ]
    goals = lines.index("the start cost's goals:")
    assert lines[goals + 1 : goals + 3] == report.goal_lines(entry["goals"])
    # A burst of 20 in 0.5 s is not the goal's 400 in 2 s: that goal is printed, not judged.
    assert entry["goals"][1]["reached"] is False
    assert entry["goals"][1]["figures"].startswith("not judged: this burst was 20 streams in 0.5 s")


def test_bench_steps_none_runs_only_the_start_cost_step(tmp_path):
    defaults = parse_args(["--steps", "none", "--soak", "0"])
    assert (defaults.steps, defaults.soak) == ([], 0)
    assert (defaults.start_streams, defaults.start_concurrency) == (600, 20)
    assert (defaults.burst, defaults.burst_seconds) == (400, 2.0)
    # One relay, no burst: the shortest run of the step (without the app, no goal can be judged).
    run, results = _run_quick(tmp_path, "--steps", "none", "--soak", "0", "--burst", "0", "--relays", "naive")
    assert (results["steps"], results["soak"]) == ([], None)
    entry = results["start_cost"]
    assert list(entry["cpu"]) == ["naive"] and entry["burst"] == {}
    assert entry["cpu"]["naive"]["completed"] == 40, entry["cpu"]["naive"]["errors"]
    assert [goal["reached"] for goal in entry["goals"]] == [False, False]
    assert entry["goals"][0]["figures"].startswith("not measured")
    assert "start cost, CPU per stream" in run.stdout and "start cost, burst" not in run.stdout
    assert "highest step held" not in run.stdout and "step 5:" not in run.stdout


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["--start-streams", "-1"],
            "--start-streams must be in [0, 20000] and --start-concurrency in [1, 20000]",
        ),
        (
            ["--start-concurrency", "0"],
            "--start-streams must be in [0, 20000] and --start-concurrency in [1, 20000]",
        ),
        (["--start-streams", "50"], "--start-streams 50 must be a multiple of --start-concurrency 20"),
        (
            ["--start-streams", "2000", "--start-concurrency", "1"],
            "--start-streams over --start-concurrency must be at most 1000",
        ),
        (["--burst", "20001"], "--burst must be in [0, 20000] and --burst-seconds in (0, 60]"),
        (["--burst-seconds", "0"], "--burst must be in [0, 20000] and --burst-seconds in (0, 60]"),
        (["--steps", "none,50"], "expected numbers like 50,200,500, got 'none,50'"),
    ],
)
def test_bench_start_cost_options_refuse_bad_values(argv, error, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert error in capsys.readouterr().err


def _start_entry(app_us: float, naive_us: float, exact: bool, burst: int, seconds: float, p99: float) -> dict:
    """A start_cost entry with only what start_cost.goals reads."""
    cpu = {
        "app": {"cpu_us_per_stream": app_us, "exact": exact},
        "naive": {"cpu_us_per_stream": naive_us, "exact": True},
    }
    return {
        "config": {"burst": burst, "burst_seconds": seconds},
        "cpu": cpu,
        "cpu_vs_naive": {"app": round(app_us / naive_us, 3)},
        "burst": {"app": {"ttft_added_ms": {"p50": 1.0, "p99": p99}, "exact": exact}},
    }


@pytest.mark.parametrize(
    ("entry", "reached", "figures"),
    [
        (
            _start_entry(400, 1000, True, 400, 2.0, 20.0),
            [True, True],
            ["400.0 us against 1000.0 us: 0.400x", "p99 20.0 ms (p50 1.0 ms)"],
        ),
        (
            _start_entry(401, 1000, True, 500, 1.5, 20.1),
            [False, False],
            ["401.0 us against 1000.0 us: 0.401x", "p99 20.1 ms (p50 1.0 ms)"],
        ),
        (
            _start_entry(100, 1000, False, 400, 2.0, 1.0),
            [False, False],
            [
                "100.0 us against 1000.0 us: 0.100x (not every stream exact: see the errors)",
                "p99 1.0 ms (p50 1.0 ms) (not every stream exact: see the errors)",
            ],
        ),
        (
            _start_entry(100, 1000, True, 399, 2.0, 1.0),
            [True, False],
            [
                "100.0 us against 1000.0 us: 0.100x",
                "not judged: this burst was 399 streams in 2 s, the goal needs at least 400 in at most "
                "2 s; p99 1.0 ms (p50 1.0 ms)",
            ],
        ),
    ],
)
def test_start_cost_goals_are_judged_on_exact_streams_and_the_goal_burst(entry, reached, figures):
    goals = start_cost.goals(entry)
    assert [goal["reached"] for goal in goals] == reached
    assert [goal["figures"] for goal in goals] == figures


def test_bench_quick_measures_the_anchors_beside_the_app(tmp_path):
    """The anchors relay every stream whole, and the app gets a ratio row to each of them."""
    missing = [f"{kind}: {RELAYS[kind].missing()}" for kind in ANCHORS if RELAYS[kind].missing()]
    if missing:
        require("; ".join(missing) + " (.ci/run installs them)")
    assert parse_args(["--relays", "all"]).relays == list(RELAYS)
    run, results = _run_quick(
        tmp_path, "--steps", "5", "--relays", "app," + ",".join(ANCHORS), *NO_START_COST
    )
    [step] = results["steps"]
    for phase in ("upstream", "app", *ANCHORS):
        _assert_whole(step, phase, results["config"]["tokens"])
    assert list(step["ratios"]) == ANCHORS
    for kind in ANCHORS:
        assert f"app/{kind}" in run.stdout
    assert results["machine"]["versions"]["openai (npm)"] is not None


def test_bench_relays_option_keeps_a_fixed_order_and_refuses_unknown_names(capsys):
    assert parse_args([]).relays == ["app", "naive"]
    assert parse_args(["--relays", "naive,app"]).relays == ["app", "naive"]
    with pytest.raises(SystemExit):
        parse_args(["--relays", "app,express"])
    assert (
        "expected 'all' or some of app,naive,lines,fastapi,node, got 'app,express'" in capsys.readouterr().err
    )


def _assert_redis_server_gone(results: dict) -> None:
    """The run's redis-server was stopped and its data dir removed."""
    assert not Path(f"/proc/{results['redis']['pid']}").exists()
    assert not Path(results["redis"]["dir"]).exists()


def test_bench_quick_measures_the_redis_store_beside_the_memory_store(tmp_path):
    require_redis_server()
    run, results = _run_quick(tmp_path, "--store", "redis", "--relays", "app", *NO_START_COST)
    assert [step["streams"] for step in results["steps"]] == [5, 20]
    assert results["config"]["env"] == {"RATE_LIMIT": "0", "MAX_RUNS_PER_CLIENT": "0"}
    assert results["start_cost"] is None
    for step in results["steps"]:
        total = step["streams"] * step["rounds"]
        for phase in ("upstream", "app", "redis"):
            _assert_whole(step, phase, results["config"]["tokens"])
        assert step["redis"]["fail_codes"] == {}  # no worker_lost, nor any other fail
        extra = step["redis"]["redis"]
        # Every run is created by one script call and written by at least one more.
        assert extra["commands"]["evalsha"] >= 2 * total, extra["commands"]
        # CPU is counted in clock ticks, which a smoke run may not fill: present, not positive.
        assert extra["cpu_us_per_token"] >= 0 and extra["relay_plus_redis_us_per_token"] >= 0
        assert extra["commands_per_token"] > 0 and extra["reads_per_token"] > 0
        [(_worker, held)] = extra["connections_by_worker"].items()
        assert 1 <= held <= 8 and extra["connections_per_worker_peak"] == held
        assert set(step["redis_vs_memory"]) >= {"cpu_ratio", "ttft_added_p50_diff_ms"}
    assert [goal["reached"] for goal in results["redis_goals"]][-2:] == [True, False]  # no soak here
    assert "redis-server" in run.stdout and "RATE_LIMIT=0, MAX_RUNS_PER_CLIENT=0" in run.stdout
    assert "relay us/tok  redis us/tok" in run.stdout
    _assert_redis_server_gone(results)


def test_bench_runs_two_workers_with_the_redis_store(tmp_path):
    """``--workers 2`` works on any machine; each worker holds its own few Redis connections."""
    require_redis_server()
    run, results = _run_quick(
        tmp_path, "--store", "redis", "--workers", "2", "--relays", "app", "--steps", "5", *NO_START_COST
    )
    [step] = results["steps"]
    _assert_whole(step, "redis", results["config"]["tokens"])
    assert step["redis"]["workers"] == 2
    by_worker = step["redis"]["redis"]["connections_by_worker"]
    assert len(by_worker) == 2 and all(1 <= held <= 8 for held in by_worker.values()), by_worker
    if os.cpu_count() < 3:
        assert "cannot show scaling" in run.stdout
    _assert_redis_server_gone(results)


def test_bench_refuses_several_workers_without_the_redis_store(capsys):
    assert parse_args(["--store", "redis", "--workers", "2"]).workers == 2
    with pytest.raises(SystemExit):
        parse_args(["--workers", "2"])
    assert "--workers 2 needs --store redis: several workers share runs only through Redis" in (
        capsys.readouterr().err
    )


def test_procfs_counts_a_process_connections_to_one_port():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        accepted = []
        try:
            accepted += [server.accept()[0] for _ in clients]
            # Only the two sockets whose far end is the port: the accepted ends do not count.
            assert connections_to([os.getpid()], port) == {os.getpid(): 2}
        finally:
            for sock in clients + accepted:
                sock.close()


def test_bench_floor_runs_every_shape_to_the_end():
    """``bench.floor`` (the cost of one read and one write per token, alone) completes each shape."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.floor", "--streams", "3", "--tokens", "10", "--tps", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()[2:]}
    assert list(rows) == ["recv", "relay", "hop", "parse"], run.stdout
    for shape, (streams, cut, reads, _per_token, kb_out, per_read) in rows.items():
        assert (streams, cut) == ("3", "0"), (shape, run.stdout)
        assert int(reads) >= 3 and float(per_read) > 0, (shape, run.stdout)
        assert (float(kb_out) > 0) == (shape != "recv"), (shape, run.stdout)


def test_bench_floor_shapes_option_keeps_order_and_refuses_unknown_names(capsys):
    from bench.floor import _shapes, main

    assert _shapes("parse, recv") == ["recv", "parse"]
    with pytest.raises(SystemExit):
        main(["--shapes", "parse,teleport"])
    assert "expected some of recv,relay,hop,parse, got 'parse,teleport'" in capsys.readouterr().err
