"""The idle timer (streamchat/idle_timer.py): fires after a quiet period, never while touched."""

import gevent

from streamchat.idle_timer import IdleTimer


def test_idle_timer_fires_once_per_quiet_period():
    fired = []
    timer = IdleTimer(0.1, lambda: fired.append(timer.idle_for()))
    # Quiet throughout: it fires again after each period (at about 0.1, 0.2, 0.3 s), not only once.
    with gevent.Timeout(2, AssertionError(f"fired {len(fired)} times in 2 s, not 3")):
        while len(fired) < 3:
            gevent.sleep(0.01)
    timer.cancel()
    # Each call comes a whole quiet period after the last touch (or the last call), never early.
    assert all(idle >= 0.1 for idle in fired)


def test_idle_timer_never_fires_while_touched():
    fired = []
    timer = IdleTimer(0.2, lambda: fired.append(True))
    for _ in range(50):  # 0.5 s of touches, each far within the period (a late wake-up included)
        gevent.sleep(0.01)
        timer.touch()
    timer.cancel()
    assert fired == []


def test_idle_timer_restart_with_a_shorter_period_fires_on_time():
    fired = []
    timer = IdleTimer(10.0, lambda: fired.append(timer.idle_for()))
    timer.restart(0.05)
    with gevent.Timeout(1, AssertionError("the new, shorter period was not used")):
        while not fired:
            gevent.sleep(0.01)
    timer.cancel()
    assert fired[0] >= 0.05


def test_idle_timer_cancelled_from_on_idle_stays_cancelled():
    fired = []

    def on_idle():
        fired.append(True)
        timer.cancel()

    timer = IdleTimer(0.02, on_idle)
    gevent.sleep(0.1)
    assert fired == [True]
