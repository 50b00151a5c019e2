"""The worker's descriptor table, grown once before it serves (streamchat/worker_hooks.py).

The stall it prevents (a worker standing still while the kernel grows its table) is a matter of
timing, which no test here asserts; docs/performance.md has the benchmark's figures. These tests
check what can be checked exactly: the table's size, as /proc reports it (``FDSize``), and that no
open descriptor is touched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, worker_pids


def _table_size(pid: int | str = "self") -> int:
    return int(re.search(r"FDSize:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1])


def _open_file_limit(pid: int) -> int:
    """The soft open-file limit of a process, from /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


# Run in a fresh Python, with a limit of its own: the table of this test process is left alone.
PROBE = """
import json, os, re, resource, sys
from streamchat.worker_hooks import presize_file_table

def table_size():
    return int(re.search(r"FDSize:\\s+(\\d+)", open("/proc/self/status").read())[1])

connections, limit, occupied = (int(arg) for arg in sys.argv[1:])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
read_end, write_end = os.pipe()
if occupied:
    os.dup2(read_end, occupied)  # a descriptor in use where the table is asked to reach
before_size, before_open = table_size(), sorted(os.listdir("/proc/self/fd"))
result = presize_file_table(connections)
print(json.dumps({
    "result": result,
    "before": before_size,
    "after": table_size(),
    "same_open": sorted(os.listdir("/proc/self/fd")) == before_open,
    "occupied_kept": not occupied or os.fstat(occupied).st_ino == os.fstat(read_end).st_ino,
}))
"""


def _probe(connections: int, limit: int, occupied: int = 0) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(connections), str(limit), str(occupied)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_presize_file_table_grows_the_table_for_two_descriptors_per_connection():
    probe = _probe(connections=200, limit=1000)
    assert probe["result"] == 464  # two per connection, and 64 to spare
    assert probe["before"] < 464 <= probe["after"]
    assert probe["same_open"]  # the descriptor that made it grow is closed again


def test_presize_file_table_never_touches_an_open_descriptor():
    # The slot it would take first (463) is in use: it takes the next free one, and 463 stays.
    probe = _probe(connections=200, limit=1000, occupied=463)
    assert probe["result"] == 464
    assert probe["after"] >= 464
    assert probe["occupied_kept"]
    assert probe["same_open"]


def test_presize_file_table_stays_within_the_open_file_limit():
    probe = _probe(connections=10_000, limit=300)
    assert probe["result"] == 300
    assert 300 <= probe["after"] < 1024  # the kernel rounds up to a power of two: 512
    assert _probe(connections=10_000, limit=64)["result"] == 0  # no room to spare: left as it was


def test_each_gunicorn_worker_grows_its_table_before_serving(demo_server):
    # gunicorn.conf.py's post_worker_init, with the default WORKER_CONNECTIONS of 10,000.
    [worker] = worker_pids(demo_server.process.pid)
    assert _table_size(worker) >= min(2 * 10_000 + 64, _open_file_limit(worker))
