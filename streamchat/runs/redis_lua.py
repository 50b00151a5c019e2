"""The Lua scripts the Redis run store runs inside Redis, where a check and a write must be one step.

Each script is atomic in Redis: nothing else runs between its check and its write. That is what
fences a producer (it cannot append once its run was declared lost) and what keeps two workers
from both declaring the same run lost. Commands are those of Redis 7.0 (Debian 12's version).

Keys, per run::

    sc:{RUN}:meta     hash: model, owner (worker id), state, finish_reason, code
    sc:{RUN}:events   stream: entry id 0-N is SSE event id N; fields n (event name), f (SSE frame)
    sc:{RUN}:readers  hash: worker id -> 1 while that worker has readers of the run
    sc:worker:WID     the worker's lease: exists while the worker lives (renewed, with a TTL)
    sc:ctl:WID        stream: messages to that worker (wake up, stop RUN)

The run's last event id is not kept in the meta hash: it is the id of the stream's newest entry
(``LAST_ID``), which MAXLEN never trims. Keeping a copy cost an HSET per run in every write batch,
for a figure read only when a reader joins or a status is asked for.

The protocol's names (run states, event names) are filled in from streamchat/protocol.py, so that
they are spelled once.
"""

from streamchat.protocol import FAIL, RUNNING, STATE_FAILED

_NAMES = {"@RUNNING@": RUNNING, "@FAIL@": FAIL, "@FAILED@": STATE_FAILED}


def _with_names(script: str) -> str:
    for placeholder, name in _NAMES.items():
        script = script.replace(placeholder, name)
    return script


# A Lua function, put before SETTLE and ABANDON (at the bottom): the id of the run's last event
# (0 before its first).
LAST_ID = """
local function last_id(events)
  local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
  if #newest == 0 then return 0 end
  return tonumber(string.sub(newest[1][1], 3))
end
"""

# KEYS: meta, owner's lease. ARGV: model, worker id, ttl ms.
# Creates the run unless the id exists (an id is never reused), and sets the owner's lease.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'model', ARGV[1], 'owner', ARGV[2], 'state', '@RUNNING@')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: the writer's lease, then the meta and the events of each run in the write batch.
# ARGV: worker id, ttl ms, maxlen; then for each run, in order:
#   - its spec, one string of words: the first event's id, a flag, then the name of each event;
#     the flag is "-" (append), "ttl" (append and refresh the TTL) or "end" (append the terminal
#     event, record the outcome, refresh the TTL);
#   - with "end" only: the final state, finish_reason and code ("" for none);
#   - the events' SSE frames, one argument each (their ids follow the first one by one).
# Returns one number per run: 1 written, 0 fenced (the run is not this worker's, not running, or
# the lease is gone), -1 not in Redis at all (expired, or Redis restarted without its data).
# One call for the whole batch: a busy worker's round trip carries many runs' tokens, and the
# lease is checked once for all of them. The spec packs in one argument what would otherwise be
# several per event: redis-py packs each argument in Python, and that was the writer's main cost.
# Event names and the flag are protocol words, never with a space; the outcome, which comes from
# the upstream, has arguments of its own.
APPEND = """
local lease_alive = redis.call('EXISTS', KEYS[1]) == 1
local results = {}
local a = 4
for r = 2, #KEYS, 2 do
  local meta, events = KEYS[r], KEYS[r + 1]
  local spec = {}
  for word in string.gmatch(ARGV[a], '%S+') do spec[#spec + 1] = word end
  local id, flag = tonumber(spec[1]) - 1, spec[2]
  local outcome = a + 1
  local frames = flag == 'end' and a + 4 or a + 1
  a = frames + #spec - 2
  local owner_state = redis.call('HMGET', meta, 'owner', 'state')
  if not owner_state[1] then
    results[#results + 1] = -1
  elseif owner_state[1] ~= ARGV[1] or owner_state[2] ~= '@RUNNING@' or not lease_alive then
    results[#results + 1] = 0
  else
    for i = frames, a - 1 do
      id = id + 1
      redis.call('XADD', events, 'MAXLEN', ARGV[3], '0-' .. id, 'n', spec[i - frames + 3], 'f', ARGV[i])
    end
    if flag == 'end' then
      redis.call('HSET', meta, 'state', ARGV[outcome], 'finish_reason', ARGV[outcome + 1],
                 'code', ARGV[outcome + 2])
    end
    if flag ~= '-' then
      redis.call('PEXPIRE', meta, ARGV[2])
      redis.call('PEXPIRE', events, ARGV[2])
    end
    results[#results + 1] = 1
  end
end
return results
"""

# KEYS: meta, events. ARGV: ttl ms, maxlen, the fail frame without its id line, the fail code.
# Returns the run's meta as a flat list (empty if unknown), with ``last`` (LAST_ID) added. A running
# run whose owner's lease is gone is first ended with the given fail event, once, whoever asks. The
# lease key is derived from the owner here, so it is not in KEYS: fine on one Redis server, not on a
# Redis Cluster.
SETTLE = """
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then return meta end
local id = last_id(KEYS[2])
local state = redis.call('HGET', KEYS[1], 'state')
local owner = redis.call('HGET', KEYS[1], 'owner')
if state == '@RUNNING@' and redis.call('EXISTS', 'sc:worker:' .. owner) == 0 then
  id = id + 1
  local frame = 'id: ' .. id .. '\\n' .. ARGV[3]
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. id, 'n', '@FAIL@', 'f', frame)
  redis.call('HSET', KEYS[1], 'state', '@FAILED@', 'code', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
  meta = redis.call('HGETALL', KEYS[1])
end
meta[#meta + 1] = 'last'
meta[#meta + 1] = tostring(id)
return meta
"""

# KEYS: meta, events. ARGV: worker id, ttl ms, maxlen, the fail frame without its id line, the code.
# Ends with the given fail event a run that this worker owns and Redis still calls running: one
# whose writes this worker gave up on when Redis was away. Returns the event id, or 0.
ABANDON = """
local owner_state = redis.call('HMGET', KEYS[1], 'owner', 'state')
if owner_state[1] ~= ARGV[1] or owner_state[2] ~= '@RUNNING@' then return 0 end
local id = last_id(KEYS[2]) + 1
local frame = 'id: ' .. id .. '\\n' .. ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '0-' .. id, 'n', '@FAIL@', 'f', frame)
redis.call('HSET', KEYS[1], 'state', '@FAILED@', 'code', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return id
"""

CREATE, APPEND = _with_names(CREATE), _with_names(APPEND)
SETTLE, ABANDON = _with_names(LAST_ID + SETTLE), _with_names(LAST_ID + ABANDON)
