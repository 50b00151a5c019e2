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


@pytest.mark.parametrize("value", ["1,2", "a,b,c", "100,0,10"])
def test_gunicorn_conf_refuses_a_bad_gc_threshold(monkeypatch, value):
    monkeypatch.setenv("GC_THRESHOLD", value)
    with pytest.raises(ValueError, match="GC_THRESHOLD"):
        runpy.run_path(CONF)


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
