"""What gunicorn's master checks before any worker starts (streamchat/startup.py, gunicorn.conf.py).

A refusal is one line, the last thing printed, and a non-zero exit; a good start is one line that
says what serves.

Run: ``python -m pytest tests/test_startup.py -q``
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, free_port

from streamchat.config import Settings
from streamchat.startup import StartupRefused, check_startup, describe


def run_gunicorn(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run gunicorn as a user would, expecting it to refuse (bounded at 20 s)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "REDIS_", "WEB_"))}
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{free_port()}", *args],
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
