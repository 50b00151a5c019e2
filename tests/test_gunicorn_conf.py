"""gunicorn.conf.py: the settings it reads from the environment, checked without starting gunicorn."""

import gc
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

CONF = str(Path(__file__).parent.parent / "gunicorn.conf.py")


@pytest.fixture(autouse=True)
def _gevent_variable_restored(monkeypatch):
    """Running gunicorn.conf.py sets GEVENT_TRACK_GREENLET_TREE: put it back as it was afterwards."""
    # setenv first, so that monkeypatch records the variable's state before the test (often absent).
    monkeypatch.setenv("GEVENT_TRACK_GREENLET_TREE", "placeholder")
    monkeypatch.delenv("GEVENT_TRACK_GREENLET_TREE")


def test_gunicorn_conf_sets_the_gc_thresholds_in_each_worker(monkeypatch):
    monkeypatch.setenv("GC_THRESHOLD", "5000,7,9")
    conf = runpy.run_path(CONF)
    before = gc.get_threshold()
    try:
        # A stand-in for gunicorn's worker: its settings, and no app (so no shutdown watch).
        conf["post_worker_init"](SimpleNamespace(cfg=SimpleNamespace(worker_connections=1)))
        assert gc.get_threshold() == (5000, 7, 9)
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GC_THRESHOLD", "1,2", "GC_THRESHOLD must be three integers like 100000,50,100, got '1,2'"),
        ("GC_THRESHOLD", "a,b,c", "GC_THRESHOLD must be three integers"),
        ("GC_THRESHOLD", "100,0,10", "GC_THRESHOLD must be three integers"),
        ("WORKER_CONNECTIONS", "x", "WORKER_CONNECTIONS must be a whole number, got 'x'"),
        ("WORKER_CONNECTIONS", "0", "WORKER_CONNECTIONS must be at least 1, got 0"),
        ("GUNICORN_TIMEOUT", "1.5", "GUNICORN_TIMEOUT must be a whole number, got '1.5'"),
        ("GRACEFUL_TIMEOUT", "abc", "GRACEFUL_TIMEOUT must be a whole number, got 'abc'"),
        ("KEEPALIVE_SECONDS", "-1", "KEEPALIVE_SECONDS must be at least 0, got -1"),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL must be debug, info, warning, error or critical, got 'verbose'"),
    ],
)
def test_gunicorn_conf_refuses_a_bad_value_in_one_line(monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as refused:
        runpy.run_path(CONF)
    assert refused.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # one line, and nothing else
    assert line.startswith("streamchat: refusing to start: ") and message in line


def test_gunicorn_conf_empty_gc_threshold_is_the_default(monkeypatch):
    monkeypatch.setenv("GC_THRESHOLD", "")
    assert runpy.run_path(CONF)["_GC_THRESHOLDS"] == (100_000, 50, 100)


def _gevent_tracks_the_spawn_tree() -> bool:
    """Ask a fresh Python in this environment (a worker's, once gunicorn.conf.py ran) what gevent does."""
    code = "import gevent; print(gevent.config.track_greenlet_tree)"
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return answer.stdout == "True\n"


def test_gunicorn_conf_turns_gevents_spawn_tree_off_unless_asked(monkeypatch):
    runpy.run_path(CONF)  # the variable is unset here (the fixture above)
    assert os.environ["GEVENT_TRACK_GREENLET_TREE"] == "false"
    assert not _gevent_tracks_the_spawn_tree()
    monkeypatch.setenv("GEVENT_TRACK_GREENLET_TREE", "true")  # the user's choice wins
    runpy.run_path(CONF)
    assert _gevent_tracks_the_spawn_tree()
