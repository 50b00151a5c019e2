"""The benchmark works: its smoke mode runs end to end and every stream arrives whole.

``python -m bench.run --quick`` starts the fake upstream and both relays under gunicorn, drives a
few streams through each, and writes results.json. No timing is asserted: a test suite on a shared
machine cannot hold figures; the benchmark reports them. Only exact counts are checked.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_both_relays_and_loses_nothing(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert [step["streams"] for step in results["steps"]] == [5, 20]
    for step in results["steps"]:
        total = step["streams"] * step["rounds"]
        for phase in ("upstream", "app", "naive"):
            figures = step[phase]
            assert (figures["completed"], figures["failed"], figures["cut"]) == (total, 0, 0), (
                phase,
                figures["errors"],
            )
            assert (figures["lost"], figures["dup"]) == (0, 0), phase
        for kind in ("app", "naive"):
            assert step[kind]["tokens_relayed"] == total * results["config"]["tokens"]
        assert set(step["ratio"]) >= {"cpu_us_per_token", "gap_p99", "ttft_added_p99"}
    assert results["soak"] is None
    assert "highest step held" in run.stdout
