"""A real nginx for the tests: Debian's /usr/sbin/nginx serving deploy/nginx.conf on loopback ports.

tests/test_nginx.py puts it between its clients and gunicorn. ``NginxProcess`` writes a top-level
nginx.conf into a temporary folder (pid file, logs and temp paths all there, running as the current
user, in the foreground) that includes a copy of deploy/nginx.conf with exactly the two lines a
deployment edits rewritten: ``server 127.0.0.1:8000;`` and ``listen 80;``. Nothing else in the site
file changes, so the tests run what operators install.

- ``EchoUpstream``: a tiny HTTP/1.1 server that answers every request with what it received, to see
  the request line and headers that nginx sends upstream.
- ``loopback_connections()``: the kernel's table of TCP sockets on 127.0.0.1 (/proc/net/tcp), to see
  which side closed a kept-alive connection.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpers import ROOT, free_port

from bench.processes import die_with_parent

NGINX = Path("/usr/sbin/nginx")
SITE = ROOT / "deploy" / "nginx.conf"
# The two lines of the site file that a deployment edits (and that an outside check rewrites).
UPSTREAM_LINE = "server 127.0.0.1:8000;"
LISTEN_LINE = "listen 80;"


def site_config(upstream_port: int, listen_port: int, text: str | None = None) -> str:
    """Return the site file with its upstream and listen lines pointed at loopback ports."""
    text = SITE.read_text() if text is None else text
    replacements = {
        UPSTREAM_LINE: f"server 127.0.0.1:{upstream_port};",
        LISTEN_LINE: f"listen 127.0.0.1:{listen_port};",
    }
    lines = text.split("\n")
    for old, new in replacements.items():
        found = [i for i, line in enumerate(lines) if line.strip() == old]
        if len(found) != 1:
            raise AssertionError(f"{SITE} must hold the line {old!r} exactly once, found {len(found)}")
        lines[found[0]] = lines[found[0]].replace(old, new)
    return "\n".join(lines)


def _user_line() -> str:
    """Return a `user` directive that keeps nginx's workers as the current user when run as root."""
    if os.geteuid() != 0:
        return ""  # workers can only run as the user that started nginx
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def _main_config(folder: Path, http_extra: str) -> str:
    """Return the top-level nginx.conf: everything nginx writes goes into ``folder``."""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
# Written by tests/nginx_helpers.py for one test run.
daemon off;
{_user_line()}
# One worker: one pool of kept-alive upstream connections, which the keep-alive test watches.
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} info;
events {{
    worker_connections 512;
}}
http {{
    access_log {folder / "access.log"};
{temp}
    {http_extra}
    include {folder / "site.conf"};
}}
"""


class NginxProcess:
    """nginx in the foreground with deploy/nginx.conf in front of ``upstream_port``; stop() ends it."""

    def __init__(self, upstream_port: int, *, http_extra: str = "", site_text: str | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="streamchat-nginx-"))
        (self.folder / "site.conf").write_text(site_config(upstream_port, self.port, site_text))
        (self.folder / "nginx.conf").write_text(_main_config(self.folder, http_extra))
        self.process = subprocess.Popen(
            [
                str(NGINX),
                "-p",
                str(self.folder),
                "-c",
                str(self.folder / "nginx.conf"),
                "-e",
                str(self.folder / "error.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stop() can reach the workers even if the master is gone.
            start_new_session=True,
            preexec_fn=die_with_parent,  # a test run that is killed leaves no nginx master behind
        )
        self._wait_until_ready()

    def _wait_until_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"nginx exited with {self.process.returncode}: {self.error_log()}"
                self.stop()
                raise RuntimeError(message)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:  # not listening yet
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nginx did not start in time")

    def __enter__(self) -> NginxProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop nginx at once (open streams are cut), kill its group if need be, remove its folder."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def error_log(self) -> str:
        """Return what nginx wrote to its error log so far."""
        try:
            return (self.folder / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


# --- an upstream that shows what nginx sent -----------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """Answer any request with a JSON object of its request line and headers."""

    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        body = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "version": self.request_version,
                "headers": [[name.lower(), value] for name, value in self.headers.items()],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _echo

    def log_message(self, format: str, *args: object) -> None:
        """Keep quiet: the tests read the echoed body, not a log."""


class EchoUpstream:
    """An HTTP/1.1 server on a free loopback port, in a thread, that echoes each request's headers."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> EchoUpstream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the kernel's view of loopback TCP connections ----------------------------------------------------------

# /proc/net/tcp's state column (include/net/tcp_states.h).
TCP_STATES = {
    "01": "ESTABLISHED",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
}


@dataclass(frozen=True)
class Connection:
    """One TCP socket: its local and remote ports on 127.0.0.1, and its state."""

    local_port: int
    remote_port: int
    state: str


def loopback_connections(port: int) -> list[Connection]:
    """Return the IPv4 loopback sockets with ``port`` at either end (Linux /proc/net/tcp)."""
    found = []
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = row.split()[1:4]
        local_port, remote_port = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if port in (local_port, remote_port) and remote_port != 0:  # remote 0: a listening socket
            found.append(Connection(local_port, remote_port, TCP_STATES.get(state, state)))
    return found
