"""How the Redis run store talks to Redis: its connections, their timeouts, and its scripts.

Redis connections per worker are a small constant whatever the number of open streams: the
writer's, the waiter's and the housekeeper's own, plus a pool of at most ``POOL_SIZE`` shared by
the routes (8 in all). Every client is made in the worker, never before the fork (gunicorn loads
the app in each worker): a pool made before a fork would share its sockets between processes.

Deliberate choices:

- **Never retried by redis-py.** A write that Redis applied but whose answer was lost must not be
  sent again. The store turns a failed call into ``store_unavailable`` instead (StoreUnavailable,
  a 503 before a stream starts, a ``fail`` event after).
- **Scripts called by their SHA**, loaded once (``Scripts``). If Redis forgot them (a restart),
  NOSCRIPT means the call did nothing, so they are loaded and the whole pipeline sent once more: every
  other command in our pipelines is idempotent (SET, HSET, HDEL, PEXPIRE, reads).
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from streamchat.protocol import FailCode
from streamchat.runs import redis_lua
from streamchat.runs.redis_keys import as_meta, events_key, meta_key
from streamchat.runs.store import StoreUnavailable, unlogged_fail

# Connections in the pool shared by the routes (and the scripts' loading).
POOL_SIZE = 5  # + the writer's, the waiter's and the housekeeper's own: 8 per worker
# How long Redis may take to accept a connection, and to answer a command.
CONNECT_TIMEOUT_SECONDS = 2.0
COMMAND_TIMEOUT_SECONDS = 5.0
# How long a request may wait for a free pooled connection (a burst of new streams queues here).
POOL_WAIT_SECONDS = 5.0
# What "Redis cannot be reached" looks like from redis-py (anything else is a bug, and is raised).
STORE_ERRORS = (RedisConnectionError, RedisTimeoutError)


def make_client(url: str, connections: int, socket_timeout: float, name: str) -> redis.Redis:
    """Return a client whose pool holds at most ``connections`` (pipelines included)."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        retry=Retry(NoBackoff(), 0),  # never retried: see the module docstring
        max_connections=connections,
        client_name=f"streamchat-{name}",  # what CLIENT LIST shows an operator
        timeout=POOL_WAIT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=socket_timeout,
    )
    return redis.Redis(connection_pool=pool)


def unavailable(err: Exception) -> StoreUnavailable:
    """Return the StoreUnavailable that a route turns into a 503."""
    return StoreUnavailable(f"Redis cannot be reached: {err}")


class Scripts:
    """The store's Lua scripts (redis_lua.py), called by their SHA, loaded once."""

    NAMES = ("CREATE", "APPEND", "SETTLE", "ABANDON")

    def __init__(self, client: redis.Redis, *, ttl_ms: int, event_log_size: int) -> None:
        self._client = client  # loads the scripts
        self._sources = {name: getattr(redis_lua, name) for name in self.NAMES}
        self._shas: dict[str, str] = {}
        self.ttl_ms = ttl_ms
        self.event_log_size = event_log_size

    def sha(self, name: str) -> str:
        """Return the script's SHA, loading it into Redis the first time."""
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = self._client.script_load(self._sources[name])
        return sha

    def load(self) -> None:
        """Load every script again (Redis restarted and forgot them)."""
        self._shas.clear()
        for name, source in self._sources.items():
            self._shas[name] = self._client.script_load(source)

    def call(self, pipe: redis.client.Pipeline, name: str, keys: list, args: list) -> None:
        """Queue a script by its SHA (execute() reloads it if Redis forgot it)."""
        pipe.evalsha(self.sha(name), len(keys), *keys, *args)

    def execute(self, pipe: redis.client.Pipeline) -> list:
        """Run a pipeline; if Redis lost the scripts, load them and run it once more (see above)."""
        commands = list(pipe.command_stack)

        def send() -> list:
            pipe.command_stack = list(commands)  # execute() empties it
            return pipe.execute(raise_on_error=False)

        return self.send_reloading(send)

    def send_reloading(self, send: Callable[[], list]) -> list:
        """Return the replies of ``send()``; if Redis lost the scripts (a restart), load them and
        call it once more. Raise the first error among the replies.

        Sending again is safe: NOSCRIPT means the script did nothing.
        """
        replies = send()
        if any(isinstance(reply, NoScriptError) for reply in replies):
            self.load()
            replies = send()
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    def settle(self, pipe: redis.client.Pipeline, run_id: str) -> None:
        """Queue SETTLE: the run's meta, after ending it as ``worker_lost`` if its owner is gone."""
        frame = unlogged_fail(FailCode.WORKER_LOST)  # the script puts its id line before it
        args = [self.ttl_ms, self.event_log_size, frame, FailCode.WORKER_LOST]
        self.call(pipe, "SETTLE", [meta_key(run_id), events_key(run_id)], args)

    def meta_of(self, client: redis.Redis, run_id: str) -> dict[str, str] | None:
        """Return the run's meta (None if unknown), settled: a run whose owner is gone has ended."""
        try:
            with client.pipeline(transaction=False) as pipe:
                self.settle(pipe, run_id)
                return as_meta(self.execute(pipe)[0])
        except STORE_ERRORS as err:
            raise unavailable(err) from None
