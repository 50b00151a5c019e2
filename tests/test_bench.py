"""The benchmark works: its smoke mode runs end to end and every stream arrives whole.

``python -m bench.run --quick`` starts the fake upstream and both relays under gunicorn, drives a
few streams through each, and writes results.json; with ``--relays`` it runs issue 5's anchors too
(under gunicorn, uvicorn and node).
No timing is asserted: a test suite on a shared machine cannot hold figures; the benchmark reports
them. Only exact counts are checked.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.processes import RELAYS
from bench.run import parse_args

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ["lines", "fastapi", "node"]


def _run_quick(out: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``bench.run --quick`` with ``options``; return the process and its results.json."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
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


def test_bench_quick_measures_the_anchors_beside_the_app(tmp_path):
    """Issue 5's anchors relay every stream whole, and the app gets a ratio row to each of them."""
    missing = [f"{kind}: {RELAYS[kind].missing()}" for kind in ANCHORS if RELAYS[kind].missing()]
    if missing:
        reason = "; ".join(missing) + " (.ci/run installs them)"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    assert parse_args(["--relays", "all"]).relays == list(RELAYS)
    run, results = _run_quick(tmp_path, "--steps", "5", "--relays", "app," + ",".join(ANCHORS))
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
