"""The Lua scripts the Redis run store runs inside Redis, where a check and a write must be one step.

Each script is atomic in Redis: nothing else runs between its check and its write. That is what
fences a producer (it cannot append once its run was declared lost) and what keeps two workers
from both declaring the same run lost. Commands are those of Redis 7.0 (Debian 12's version).

Keys, per run::

    sc:{RUN}:meta     hash: model, owner (worker id), state, last (event id), finish_reason, code
    sc:{RUN}:events   stream: entry id 0-N is SSE event id N; fields n (event name), f (SSE frame)
    sc:{RUN}:readers  hash: worker id -> 1 while that worker has readers of the run
    sc:worker:WID     the worker's lease: exists while the worker lives (renewed, with a TTL)
    sc:ctl:WID        stream: messages to that worker (wake up, stop RUN)

The protocol's names (run states, event names) are filled in from streamchat/protocol.py, so that
they are spelled once.
"""

from streamchat.protocol import FAIL, RUNNING, STATE_FAILED

_NAMES = {"@RUNNING@": RUNNING, "@FAIL@": FAIL, "@FAILED@": STATE_FAILED}


def _with_names(script: str) -> str:
    for placeholder, name in _NAMES.items():
        script = script.replace(placeholder, name)
    return script


# KEYS: meta, owner's lease. ARGV: model, worker id, ttl ms.
# Creates the run unless the id exists (an id is never reused), and sets the owner's lease.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'model', ARGV[1], 'owner', ARGV[2], 'state', '@RUNNING@', 'last', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: meta, events, the writer's lease.
# ARGV: worker id, ttl ms, maxlen, final state ('' while running), finish_reason, code,
#       then (event id, name, frame) for each event, in order.
# Returns 1 when written, 0 when fenced (the run is not this worker's, not running, or the lease is
# gone), -1 when the run is not in Redis at all (expired, or Redis restarted without its data).
APPEND = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return -1 end
if owner ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= '@RUNNING@' then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local last = nil
for i = 7, #ARGV, 3 do
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '0-' .. ARGV[i], 'n', ARGV[i + 1], 'f', ARGV[i + 2])
  last = ARGV[i]
end
if last then redis.call('HSET', KEYS[1], 'last', last) end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'state', ARGV[4], 'finish_reason', ARGV[5], 'code', ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: meta, events. ARGV: ttl ms, maxlen, the fail frame without its id line, the fail code.
# Returns the run's meta as a flat list (empty if unknown). A running run whose owner's lease is gone
# is first ended with the given fail event, once, whoever asks. The lease key is derived from the
# owner here, so it is not in KEYS: fine on one Redis server, not on a Redis Cluster.
SETTLE = """
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return meta end
local state = redis.call('HGET', KEYS[1], 'state')
local owner = redis.call('HGET', KEYS[1], 'owner')
if state ~= '@RUNNING@' or redis.call('EXISTS', 'sc:worker:' .. owner) == 1 then return meta end
local id = tonumber(redis.call('HGET', KEYS[1], 'last')) + 1
local frame = 'id: ' .. id .. '\\n' .. ARGV[3]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. id, 'n', '@FAIL@', 'f', frame)
redis.call('HSET', KEYS[1], 'state', '@FAILED@', 'code', ARGV[4], 'last', id)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

CREATE, APPEND, SETTLE = _with_names(CREATE), _with_names(APPEND), _with_names(SETTLE)
