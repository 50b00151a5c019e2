"""What clients may use up: live runs per client (MAX_RUNS_PER_CLIENT) and the day's token budget.

Where it sits: the request guards (streamchat/guards.py) ask ``ClientSlots.reserve`` and
``TokenBudget.retry_after`` before a run starts, and the producer reports, when a run ends however it
ends, how many completion tokens it spent (``on_end`` in streamchat/producer.py), which releases the
client's slot and charges the budget. The rate of runs started (RATE_LIMIT) is counted by the
``limits`` library, in guards.py.

Two books side by side, as for runs: in this worker's memory (one worker; the counts hold per worker),
or in Redis when REDIS_URL is set (every worker and host shares them, through the run store's own
connection pool).

Deliberate choices:

- A slot is taken (reserved) before the run starts, so that two requests from one client cannot both
  pass a check made before either counts; a reservation that never becomes a run expires on its own.
- Slots are released when the producer ends, on every way a run ends (done, fail, stop, deadline,
  shutdown). A worker that dies cannot release its slots, so a client that looks full has each of its
  runs checked against the run store first: a run that is no longer running (the Redis store ends a
  dead worker's runs as ``worker_lost`` when asked) frees its slot then.
- The budget counts completion tokens, so a run that crosses it is finished, not cut; runs that
  started before it was spent may spend a little more. Days are UTC days.

Try it::

    python -c "from streamchat.quotas import seconds_to_utc_midnight; print(seconds_to_utc_midnight())"
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import time
from collections.abc import Callable, Iterator

from redis.exceptions import RedisError

from streamchat.protocol import RUNNING
from streamchat.runs import RunStore, StoreUnavailable

# A reservation not turned into a run within this long (a start that failed past our notice) expires.
RESERVATION_SECONDS = 30.0
# How long a started run holds its slot at most, if nobody releases it and the store is not asked.
SLOT_LEASE_SECONDS = 86_400.0
_RUN_PREFIX = "run:"


def seconds_to_utc_midnight(now: float | None = None) -> float:
    """Return the seconds from ``now`` (epoch seconds) to the next midnight UTC."""
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    midnight = (moment + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - moment).total_seconds()


def utc_day(now: float | None = None) -> str:
    """Return the UTC date of ``now`` as YYYY-MM-DD."""
    return dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date().isoformat()


# --- the books: where slots and the day's spending are kept ----------------------------------------------


class MemoryBook:
    """Slots and spending in this worker's memory."""

    def __init__(self) -> None:
        self._slots: dict[str, dict[str, float]] = {}
        self._spent: dict[str, int] = {}

    def members(self, client: str) -> list[str]:
        """Return the client's unexpired slot members."""
        slots = self._slots.get(client, {})
        now = time.time()
        for member in [m for m, expires in slots.items() if expires <= now]:
            del slots[member]
        if not slots:
            self._slots.pop(client, None)
        return list(slots)

    def add(self, client: str, member: str, seconds: float, *, replacing: str = "") -> list[str]:
        """Hold a slot for ``seconds`` (in place of ``replacing``); return the client's slots."""
        slots = self._slots.setdefault(client, {})
        slots[member] = time.time() + seconds
        slots.pop(replacing, None)
        return self.members(client)

    def remove(self, client: str, *members: str) -> None:
        """Let slots go."""
        slots = self._slots.get(client, {})
        for member in members:
            slots.pop(member, None)
        if not slots:
            self._slots.pop(client, None)

    def spent(self, day: str) -> int:
        """Return the tokens spent on ``day``."""
        return self._spent.get(day, 0)

    def spend(self, day: str, tokens: int) -> None:
        """Add tokens to ``day``'s spending, forgetting other days."""
        self._spent = {day: self._spent.get(day, 0) + tokens}


class RedisBook:
    """Slots (a sorted set per client, scored by expiry) and spending (a counter per day) in Redis."""

    def __init__(self, client) -> None:
        self._redis = client

    def members(self, client: str) -> list[str]:
        """Return the client's unexpired slot members."""
        key = _slots_key(client)
        with _redis_errors(), self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", time.time())
            pipe.zrange(key, 0, -1)
            members = pipe.execute()[1]
        return [m.decode() for m in members]

    def add(self, client: str, member: str, seconds: float, *, replacing: str = "") -> list[str]:
        """Hold a slot for ``seconds`` (in place of ``replacing``); return the client's slots.

        One round trip; the set itself expires with its last member.
        """
        key = _slots_key(client)
        now = time.time()
        with _redis_errors(), self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {member: now + seconds})
            if replacing:
                pipe.zrem(key, replacing)
            pipe.expire(key, int(seconds) + 1, gt=True)
            pipe.expire(key, int(seconds) + 1, nx=True)
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zrange(key, 0, -1)
            members = pipe.execute()[-1]
        return [m.decode() for m in members]

    def remove(self, client: str, *members: str) -> None:
        """Let slots go."""
        with _redis_errors():
            self._redis.zrem(_slots_key(client), *members)

    def spent(self, day: str) -> int:
        """Return the tokens spent on ``day``, all workers and hosts together."""
        with _redis_errors():
            return int(self._redis.get(_budget_key(day)) or 0)

    def spend(self, day: str, tokens: int) -> None:
        """Add tokens to ``day``'s spending; the counter outlives the day by one more."""
        key = _budget_key(day)
        with _redis_errors(), self._redis.pipeline(transaction=False) as pipe:
            pipe.incrby(key, tokens)
            pipe.expire(key, 2 * 86_400)
            pipe.execute()


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    """Turn a Redis failure into StoreUnavailable (the guards answer 503 store_unavailable)."""
    try:
        yield
    except RedisError as err:
        raise StoreUnavailable(f"Redis cannot be reached: {type(err).__name__}") from None


def _slots_key(client: str) -> str:
    return f"sc:slots:{client}"


def _budget_key(day: str) -> str:
    return f"sc:budget:{day}"


def make_book(store: RunStore) -> MemoryBook | RedisBook:
    """Keep the counts where the runs are: in Redis when the run store is Redis, else in memory."""
    client = getattr(store, "client", None)
    return RedisBook(client) if store.kind == "redis" and client is not None else MemoryBook()


# --- the two quotas ---------------------------------------------------------------------------------------


class ClientSlots:
    """Live runs per client: at most ``limit`` at once (0: no limit)."""

    def __init__(self, limit: int, book: MemoryBook | RedisBook, store: RunStore) -> None:
        self.limit = limit
        self._book = book
        self._store = store

    def reserve(self, client: str) -> str | None:
        """Take a slot for a run about to start; return its token, or None if the client is full."""
        token = "new:" + secrets.token_hex(8)
        # Added first, counted after (one round trip with Redis): of two requests that come together,
        # neither can slip past a count that the other has not joined yet.
        full = len(self._book.add(client, token, RESERVATION_SECONDS)) > self.limit
        if full and self._free_ended(client) > self.limit:
            self._book.remove(client, token)
            return None
        return token

    def started(self, client: str, token: str, run_id: str) -> None:
        """Turn a reservation into the run's own slot, which the run store can vouch for."""
        self._book.add(client, _RUN_PREFIX + run_id, SLOT_LEASE_SECONDS, replacing=token)

    def release(self, client: str, token: str, run_id: str | None) -> None:
        """Let a run's slot go (and its reservation, if it never started)."""
        members = [token] + ([_RUN_PREFIX + run_id] if run_id else [])
        self._book.remove(client, *members)

    def held(self, client: str) -> int:
        """Return how many slots the client holds (reservations included)."""
        return len(self._book.members(client))

    def _free_ended(self, client: str) -> int:
        """Release the slots of runs that are no longer running; return how many are left."""
        ended = []
        for member in self._book.members(client):
            if member.startswith(_RUN_PREFIX):
                status = self._store.status(member.removeprefix(_RUN_PREFIX))
                if status is None or status.state != RUNNING:
                    ended.append(member)
        if ended:
            self._book.remove(client, *ended)
        return len(self._book.members(client))


class TokenBudget:
    """Completion tokens the service may spend per UTC day (0: unlimited)."""

    def __init__(self, tokens_per_day: int, book: MemoryBook | RedisBook) -> None:
        self.tokens_per_day = tokens_per_day
        self._book = book

    def retry_after(self, now: Callable[[], float] = time.time) -> float | None:
        """Return the seconds until the budget renews if it is spent for today, else None."""
        if not self.tokens_per_day:
            return None
        moment = now()
        if self._book.spent(utc_day(moment)) < self.tokens_per_day:
            return None
        return seconds_to_utc_midnight(moment)

    def spend(self, tokens: int) -> None:
        """Charge today's budget with a finished run's completion tokens."""
        if self.tokens_per_day and tokens > 0:
            self._book.spend(utc_day(), tokens)
