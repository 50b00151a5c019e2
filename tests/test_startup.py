"""What gunicorn's master checks before any worker starts (streamchat/startup.py, gunicorn.conf.py).

A refusal is one line, the last thing printed, and a non-zero exit; a good start is one line that
says what serves.

Run: ``python -m pytest tests/test_startup.py -q``
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from helpers import ROOT, free_port

from streamchat.config import Settings
from streamchat.startup import StartupRefused, check_startup, describe, is_loopback_bind


def run_gunicorn(*args: str, port: int | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run gunicorn as a user would, expecting it to refuse (bounded at 20 s); on a free port unless
    ``port`` is given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "REDIS_", "WEB_"))}
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port or free_port()}", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [(["-w", "2"], {}), (["--workers", "3"], {}), ([], {"WEB_CONCURRENCY": "4"})],
    ids=["-w", "--workers", "WEB_CONCURRENCY"],
)
def test_startup_refuses_several_workers_without_redis(args, env):
    result = run_gunicorn(*args, **env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("streamchat: refusing to start: ")
    assert "REDIS_URL" in last and "workers need" in last


def test_startup_refuses_preload():
    result = run_gunicorn("--preload")
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "streamchat: refusing to start: --preload (preload_app) builds the app once in the master"
        )
    )
    assert "Traceback" not in result.stderr


def test_startup_that_fails_to_bind_leaves_no_metrics_directory(tmp_path):
    # The port is taken: gunicorn exits after on_starting made the metrics directory.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_gunicorn(port=taken.getsockname()[1], TMPDIR=str(tmp_path))
    assert result.returncode != 0
    assert "Can't connect" in result.stderr or "Address already in use" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_startup_bad_setting_is_the_last_line():
    result = run_gunicorn(HEARTBEAT_SECONDS="-1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "streamchat: refusing to start: HEARTBEAT_SECONDS must be greater than 0, got -1.0"
    )
    assert "Traceback" not in result.stderr


def test_startup_line_says_what_serves():
    settings = Settings.from_env({"OPENAI_BASE_URL": "http://models.internal:8001/v1", "OPENAI_MODEL": "m1"})
    assert describe(settings, workers=1, binds=["127.0.0.1:8000"]) == (
        "streamchat: provider=openai (models.internal) model=m1 store=memory workers=1 bind=127.0.0.1:8000"
    )


def test_startup_line_never_shows_the_redis_password():
    settings = Settings.from_env({"REDIS_URL": "redis://:s3cret@cache.internal:6380/2"})
    line = check_startup(settings, workers=4, binds=["0.0.0.0:8000"])
    assert line == (
        "streamchat: provider=demo model=demo store=redis (cache.internal:6380) workers=4 bind=0.0.0.0:8000"
    )
    assert "s3cret" not in line


def test_startup_refusal_names_redis_url():
    with pytest.raises(StartupRefused, match="2 workers need REDIS_URL"):
        check_startup(Settings.from_env({}), workers=2, binds=["127.0.0.1:8000"])


# --- putting it on the internet: refusals that protect the API key ---------------------------------------

OPENAI = {"OPENAI_API_KEY": "sk-test-0000000000", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1:8000", True),
        ("127.0.0.2:8000", True),
        ("localhost:8000", True),
        ("[::1]:8000", True),
        ("unix:/run/streamchat.sock", True),
        ("0.0.0.0:8000", False),
        ("[::]:8000", False),
        ("192.168.1.20:8000", False),
        ("chat.example.com:80", False),
        ("fd://3", False),
    ],
)
def test_startup_tells_loopback_binds_from_the_rest(bind, loopback):
    assert is_loopback_bind(bind) is loopback


def test_startup_refuses_a_token_shorter_than_32_characters():
    settings = Settings.from_env({"ACCESS_TOKEN": "x" * 31})
    with pytest.raises(
        StartupRefused, match="ACCESS_TOKEN has 31 characters; it needs at least 32"
    ) as refused:
        check_startup(settings, workers=1, binds=["127.0.0.1:8000"])
    assert "x" * 31 not in str(refused.value)
    assert check_startup(Settings.from_env({"ACCESS_TOKEN": "x" * 32}), workers=1, binds=["127.0.0.1:8000"])


def test_startup_refuses_a_public_openai_service_without_a_token():
    with pytest.raises(StartupRefused) as refused:
        check_startup(Settings.from_env(OPENAI), workers=1, binds=["0.0.0.0:8000"])
    assert str(refused.value).startswith("listening on 0.0.0.0:8000 (beyond this machine) with the openai")
    assert "Set ACCESS_TOKEN, or ALLOW_UNAUTHENTICATED=true" in str(refused.value)


@pytest.mark.parametrize(
    ("extra", "binds"),
    [
        ({"ACCESS_TOKEN": "t" * 32}, ["0.0.0.0:8000"]),  # a token guards it
        ({"ALLOW_UNAUTHENTICATED": "true"}, ["0.0.0.0:8000"]),  # something in front does
        ({}, ["127.0.0.1:8000"]),  # only this machine can reach it
        ({"MODEL_PROVIDER": "demo"}, ["0.0.0.0:8000"]),  # the demo model costs nothing
    ],
)
def test_startup_accepts_a_guarded_or_a_free_service(extra, binds):
    assert check_startup(Settings.from_env({**OPENAI, **extra}), workers=1, binds=binds).startswith(
        "streamchat:"
    )
