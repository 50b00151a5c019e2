"""Read a process's CPU time and memory from /proc: what the benchmark reports about each process.

Used by bench/loadgen.py (which samples the relay while streams are open) and bench/run.py. Linux
only, no dependencies, no gevent, so that either side can import it.

Try it::

    python -c "from bench.procfs import cpu_seconds, rss_kb; print(cpu_seconds(1), rss_kb(1))"
"""

from __future__ import annotations

import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """Return utime + stime from /proc/<pid>/stat in seconds (None if the process is gone).

    The kernel counts in clock ticks (usually 10 ms), so a figure is only as fine as the load that
    is measured is long: a step of several seconds at full load is well within it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name in parentheses may hold spaces: count fields after its closing parenthesis.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_kb(pid: int) -> int | None:
    """Return VmRSS from /proc/<pid>/status in KiB (None if the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_bytes()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            return int(line.split()[1])
    return None


def children_of(pid: int) -> list[int]:
    """Return the ids of the processes whose parent is ``pid`` (a gunicorn master's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue  # it exited while we looked
        if int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found
