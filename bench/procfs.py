"""Read a process's CPU time, memory and connections from /proc: what the benchmark reports about it.

Used by bench/loadgen.py (which samples the relay while streams are open) and bench/run.py (which
also counts each worker's connections to Redis). Linux only, no dependencies, no gevent, so that
either side can import it.

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


def connections_to(pids: list[int], port: int) -> dict[int, int | None]:
    """Count each process's established TCP connections to a loopback ``port`` (None if it is gone).

    The kernel's socket table (/proc/net/tcp, IPv4) gives the inode of every established socket
    whose far end is that port; a process holds the sockets whose inodes its /proc/<pid>/fd links
    name. So the count is per process, whichever of its greenlets or pools holds the connection.
    """
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            # fields: sl, local, remote (hex ip:port), state (01: established), ..., inode (10th)
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    counts: dict[int, int | None] = {}
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            counts[pid] = None
            continue
        held = 0
        for name in names:
            try:
                held += os.readlink(f"/proc/{pid}/fd/{name}") in inodes
            except OSError:
                continue  # closed while we looked
        counts[pid] = held
    return counts
