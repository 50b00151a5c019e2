"""Run the fake upstream as a child process, for tests and benchmarks, and read its records.

Where it sits: tests/conftest.py starts one for the test session (the ``fake_upstream`` fixture),
and tests that need a server of their own start another. ``FakeUpstreamProcess`` starts
``python -m fakeupstream --port 0`` (so the server runs monkey-patched, in a process of its own),
reads the port it printed, and stops it on ``stop()`` or at the end of a ``with`` block. Importing
this module starts nothing and patches nothing.

Try it::

    python -c "from fakeupstream import FakeUpstreamProcess as P; p = P(); print(p.base_url); p.stop()"
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self


class FakeUpstreamProcess:
    """Run the fake upstream as a child process on a free port; ``stop()`` (or ``with``) ends it."""

    def __init__(self, *args: str, startup_timeout: float = 10.0) -> None:
        command = [sys.executable, "-m", "fakeupstream", "--port", "0", *args]
        root = Path(__file__).resolve().parent.parent  # so that `-m fakeupstream` imports this checkout
        self.process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE)
        try:
            line = self._read_line(startup_timeout)
        except BaseException:
            self.stop()
            raise
        match = re.fullmatch(r"fake upstream listening on (http://[^\s/]+:(\d+)/v1)\n", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"unexpected first line from the fake upstream: {line!r}")
        self.base_url = match[1]
        self.port = int(match[2])
        self.root_url = self.base_url.removesuffix("/v1")
        # Never send requests for 127.0.0.1 through a proxy taken from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _read_line(self, timeout: float) -> str:
        """Read the listening line, or fail after ``timeout`` seconds."""
        stdout = self.process.stdout
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the fake upstream did not start within {timeout} s")
        line = stdout.readline().decode()
        if not line:
            raise RuntimeError(f"the fake upstream exited with code {self.process.wait()} before listening")
        return line

    def _call(self, method: str) -> list[dict]:
        """Send GET or DELETE to ``/_fake/requests`` and return the JSON answer."""
        request = urllib.request.Request(f"{self.root_url}/_fake/requests", method=method)
        with self._opener.open(request, timeout=5) as response:
            return json.load(response)

    def requests(self, tag: str | None = None) -> list[dict]:
        """Return the records of chat requests so far, only those with ``tag`` if given."""
        records = self._call("GET")
        return records if tag is None else [r for r in records if r["tag"] == tag]

    def clear(self) -> None:
        """Forget the records of earlier requests."""
        self._call("DELETE")

    def wait_for_outcome(self, tag: str, timeout: float = 2.0) -> dict:
        """Return the first record with ``tag`` once its outcome is known; TimeoutError if never."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.requests(tag):
                if record["outcome"] is not None:
                    return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"no finished request tagged {tag!r} after {timeout} s")
            time.sleep(0.01)

    def stop(self) -> int:
        """Stop the server (SIGINT, then SIGKILL after 5 s); return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
