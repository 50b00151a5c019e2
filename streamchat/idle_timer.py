"""A clock for "nothing happened for N seconds" that costs one timer per period, not one per event.

Where it is used: the producer's first-token and stall clocks (streamchat/producer.py) and each
reader's heartbeat clock (streamchat/reader.py). Both are restarted by every token, so the
obvious way (a fresh ``gevent.Timeout`` around every wait) starts and cancels a timer per token
per stream, and a wait with a timeout costs gevent more than one without (docs/performance.md).

How: ``touch()`` only notes the time. One loop timer sleeps for the period; when it fires, it looks
at how long it has really been quiet. Quiet long enough: call ``on_idle`` and sleep for another
period. Otherwise: sleep again for what is left. So a stream that gets a token every 20 ms wakes
its timer once per period, not fifty times a second.

``on_idle`` runs in gevent's hub, like every timer callback: it may set an event or throw into a
greenlet (as ``gevent.Timeout`` does), and must not block.

Try it::

    python -c "import gevent; from streamchat.idle_timer import IdleTimer; \
t = IdleTimer(0.2, lambda: print('idle')); gevent.sleep(0.5); t.cancel()"
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent


class IdleTimer:
    """Calls ``on_idle`` each time ``seconds`` pass without a ``touch()``, until cancelled."""

    def __init__(self, seconds: float, on_idle: Callable[[], None]) -> None:
        self.seconds = seconds
        self._on_idle = on_idle
        self._touched = time.monotonic()
        self._timer = None
        self._due = 0.0
        self._arm(seconds)

    def touch(self) -> None:
        """Note that something happened: the quiet period starts again from now."""
        self._touched = time.monotonic()

    def restart(self, seconds: float) -> None:
        """Change the period (the first-token clock becoming the stall clock) and touch."""
        self.seconds = seconds
        self.touch()
        if self._timer is not None and self._due > self._touched + seconds:
            self._arm(seconds)  # the sleeping timer would wake too late for the shorter period

    def idle_for(self) -> float:
        """Return the seconds since the last touch."""
        return time.monotonic() - self._touched

    def cancel(self) -> None:
        """Stop the clock for good."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._due = time.monotonic() + delay
        self._timer = gevent.get_hub().loop.timer(delay)
        self._timer.start(self._fire)

    def _fire(self) -> None:
        # The loop's clock can run a little behind (it is read once per loop turn), so the timer may
        # fire early: what counts is the real time since the last touch.
        left = self.seconds - self.idle_for()
        if left > 0:
            self._arm(left)
            return
        self._arm(self.seconds)  # first, so that an on_idle that cancels the clock cancels this too
        self._on_idle()
