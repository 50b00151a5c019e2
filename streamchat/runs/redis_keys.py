"""Where the Redis run store keeps things in Redis, and how it reads Redis's replies back.

The key layout is described once, in redis_lua.py beside the scripts that write it. The ``{RUN}``
braces are a Redis Cluster hash tag: a run's three keys would stay in one slot (but see
redis_lua.SETTLE). The stream entry id ``0-N`` is the SSE event id N, so ``Last-Event-ID`` maps
straight onto ``XRANGE``/``XREAD``.

Pure functions, no connection: the writer, the waiter, the housekeeper and the store share them.
"""

from __future__ import annotations

from streamchat.runs.store import RunStatus, StoredEvent


def meta_key(run_id: str) -> str:
    """Return the key of the run's hash: model, owner, state, last event id, outcome."""
    return f"sc:{{{run_id}}}:meta"


def events_key(run_id: str) -> str:
    """Return the key of the run's stream of events."""
    return f"sc:{{{run_id}}}:events"


def readers_key(run_id: str) -> str:
    """Return the key of the hash of workers that have readers of the run."""
    return f"sc:{{{run_id}}}:readers"


def lease_key(worker_id: str) -> str:
    """Return the key of the worker's lease (it exists while the worker lives)."""
    return f"sc:worker:{worker_id}"


def control_key(worker_id: str) -> str:
    """Return the key of the worker's control stream (wake up, stop RUN)."""
    return f"sc:ctl:{worker_id}"


def run_of_events_key(key: bytes) -> str:
    """Return the run id inside an events key (``sc:{RUN}:events``), as XREAD names it."""
    return key.decode().split("{", 1)[1].split("}", 1)[0]


def entry_id(raw: bytes) -> int:
    """Return the SSE event id of a stream entry id ``0-N``."""
    return int(raw.split(b"-", 1)[1])


def as_meta(flat: list[bytes]) -> dict[str, str] | None:
    """Turn HGETALL's flat reply (as a script returns it) into a dict; None for an unknown run."""
    if not flat:
        return None
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def status_of(run_id: str, meta: dict[str, str]) -> RunStatus:
    """Return the status that a run's meta hash says."""
    return RunStatus(
        run_id,
        meta["model"],
        meta["state"],
        int(meta["last"]),
        meta.get("finish_reason") or None,
        meta.get("code") or None,
    )


def stored(entry: tuple[bytes, dict[bytes, bytes]]) -> StoredEvent:
    """Return the event that a stream entry holds (fields ``n``, its name, and ``f``, its frame)."""
    raw_id, fields = entry
    return StoredEvent(entry_id(raw_id), fields[b"n"].decode(), fields[b"f"])
