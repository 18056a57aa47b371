"""The Redis data model: key names and the Lua scripts that change several keys at once.

Keys (``p`` is the store's prefix, ``deepresearch`` by default):

- ``p:session:<id>``       hash: the record's fields (absent = None) and ``last_seq``
- ``p:events:<id>``        stream: one entry per event, id ``<seq>-0``, fields ``t`` and ``d``
- ``p:checkpoint:<id>``    string: the agent's last checkpoint (JSON)
- ``p:lease:<id>``         string: the token of the worker running it, with a TTL
- ``p:turns:<cid>``        sorted set: a conversation's session ids, scored by turn
- ``p:sessions``           sorted set: every session id, scored by ``created_at`` (µs)
- ``p:sessions:status:<s>`` and ``p:sessions:owner:<o>``: the same, per status and owner
- ``p:answered`` and ``p:answered:owner:<o>``: sessions with an answer, by ``created_at``
- ``p:conversations`` and ``p:conversations:owner:<o>``: conversation ids by latest question
- ``p:expiring``           sorted set: finished conversations by retention deadline (ms)
- ``p:worker:<name>``, ``p:workers``: worker heartbeats (``redis_workers.py``)
- ``p:served``, ``p:served:clock``: owners' last services, for fair order (``FAIR``)

Every write that touches more than one key is one script, so it is atomic: a
reader never sees an event without its record change, nor a session in two
status sets. The scripts derive index key names from the prefix they are given
(fine on one Redis server or a replicated pair; Redis Cluster would need hash
tags and declared keys, which we do not need at our scale: see docs/deploy.md).
"""

from __future__ import annotations

from dataclasses import dataclass

FINISHED_ONLY = """
local function unfinished(status)
  return status == 'queued' or status == 'processing'
end
"""

# Deletes one conversation with all its sessions' keys and index entries.
DROP = """
local function drop_conversation(p, cid)
  local turns = p .. ':turns:' .. cid
  local owners = {}
  local dropped = 0
  for _, sid in ipairs(redis.call('ZRANGE', turns, 0, -1)) do
    local hash = p .. ':session:' .. sid
    local fields = redis.call('HMGET', hash, 'status', 'owner')
    redis.call('ZREM', p .. ':sessions', sid)
    redis.call('ZREM', p .. ':answered', sid)
    if fields[1] then redis.call('ZREM', p .. ':sessions:status:' .. fields[1], sid) end
    if fields[2] then
      owners[fields[2]] = true
      redis.call('ZREM', p .. ':sessions:owner:' .. fields[2], sid)
      redis.call('ZREM', p .. ':answered:owner:' .. fields[2], sid)
    end
    redis.call('DEL', hash, p .. ':events:' .. sid, p .. ':checkpoint:' .. sid,
      p .. ':lease:' .. sid)
    dropped = dropped + 1
  end
  for owner, _ in pairs(owners) do
    redis.call('ZREM', p .. ':conversations:owner:' .. owner, cid)
  end
  redis.call('DEL', turns)
  redis.call('ZREM', p .. ':conversations', cid)
  redis.call('ZREM', p .. ':expiring', cid)
  return dropped
end
"""

# ARGV: prefix, id, score, conversation id, turn, owner ('' = none), status,
# answered ('1' or '0'), write id, then admission's limits: follow-up ('1': refuse
# while another turn of the conversation is unfinished), slots (the cluster's, '-1'
# = no admission checks), max queue, max queued per key (0 = none), then the hash's
# field/value pairs.
# Every call carries a fresh write id, kept in the record: a client that retries a
# call whose reply was lost (Redis restarted) finds its own id and does nothing twice.
# Errors: BUSY (a turn of the conversation is unfinished), QUEUEFULL <waiting>,
# QUOTA <waiting for this owner> (nothing is written then).
# Counts come from the status and owner indexes, which every status change keeps in
# the same script as the change: they cannot drift whichever way a session ends.
CREATE = (
    FINISHED_ONLY
    + """
local p, id, score, cid, turn, owner, status, answered, write_id =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local follow_up, slots = ARGV[10], tonumber(ARGV[11])
local max_queue, max_queued_per_key = tonumber(ARGV[12]), tonumber(ARGV[13])
local hash = p .. ':session:' .. id
if redis.call('EXISTS', hash) == 1 then
  -- Our own create again (a retry after a lost reply) succeeds; anyone else's conflicts.
  if redis.call('HGET', hash, 'write_id') == write_id then return 1 end
  return 0
end
if follow_up == '1' then
  for _, sid in ipairs(redis.call('ZRANGE', p .. ':turns:' .. cid, 0, -1)) do
    if unfinished(redis.call('HGET', p .. ':session:' .. sid, 'status')) then
      return redis.error_reply('BUSY ' .. sid)
    end
  end
end
if slots >= 0 then
  -- As in one process: a session that finds a free slot is not counted as waiting.
  -- Every session is 'queued' until a worker starts it, so the waiting ones are the
  -- queued beyond the slots nobody runs.
  local queued_key = p .. ':sessions:status:queued'
  local queued = redis.call('ZCARD', queued_key)
  local running = redis.call('ZCARD', p .. ':sessions:status:processing')
  local free = math.max(0, slots - running)
  if queued >= free then
    local waiting = queued - free
    if waiting >= max_queue then
      return redis.error_reply('QUEUEFULL ' .. waiting)
    end
    if max_queued_per_key > 0 and owner ~= '' then
      -- This owner's waiting ones: its queued beyond the free slots (exact when the
      -- free slots are its own to take; else lenient by at most the free slots,
      -- which workers are about to fill).
      local mine = redis.call('ZINTERCARD', 2, queued_key, p .. ':sessions:owner:' .. owner)
      mine = math.max(0, mine - free)
      if mine >= max_queued_per_key then
        return redis.error_reply('QUOTA ' .. mine)
      end
    end
  end
end
local fields = {}
for i = 14, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', hash, 'write_id', write_id, unpack(fields))
redis.call('ZADD', p .. ':sessions', score, id)
redis.call('ZADD', p .. ':sessions:status:' .. status, score, id)
redis.call('ZADD', p .. ':turns:' .. cid, turn, id)
redis.call('ZADD', p .. ':conversations', 'GT', score, cid)
if owner ~= '' then
  redis.call('ZADD', p .. ':sessions:owner:' .. owner, score, id)
  redis.call('ZADD', p .. ':conversations:owner:' .. owner, 'GT', score, cid)
end
if answered == '1' then
  redis.call('ZADD', p .. ':answered', score, id)
  if owner ~= '' then redis.call('ZADD', p .. ':answered:owner:' .. owner, score, id) end
end
-- A new question revives a conversation that was counting down to deletion.
if redis.call('ZREM', p .. ':expiring', cid) == 1 then
  for _, sid in ipairs(redis.call('ZRANGE', p .. ':turns:' .. cid, 0, -1)) do
    redis.call('PERSIST', p .. ':session:' .. sid)
    redis.call('PERSIST', p .. ':events:' .. sid)
    redis.call('PERSIST', p .. ':checkpoint:' .. sid)
  end
  redis.call('PERSIST', p .. ':turns:' .. cid)
end
return 1
"""
)

# ARGV: prefix, id, lease token ('' = unfenced), retention ms ('0' = none), write id
# (as in CREATE), number of events n, then n triples (seq, type, data), then change
# field/value pairs.
# Errors: NOSESSION, LEASELOST, STALE (nothing is written then).
WRITE = (
    FINISHED_ONLY
    + """
local p, id, token, write_id = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local retention, n = tonumber(ARGV[4]), tonumber(ARGV[6])
local hash = p .. ':session:' .. id
if redis.call('EXISTS', hash) == 0 then
  return redis.error_reply('NOSESSION no session ' .. id)
end
if token ~= '' and redis.call('GET', p .. ':lease:' .. id) ~= token then
  return redis.error_reply('LEASELOST session ' .. id .. ' is leased to another worker')
end
local last = tonumber(redis.call('HGET', hash, 'last_seq') or '0')
if redis.call('HGET', hash, 'write_id') == write_id then return last end
local stream = p .. ':events:' .. id
local previous = last
for k = 0, n - 1 do
  local seq = tonumber(ARGV[7 + 3 * k])
  if seq <= previous then
    return redis.error_reply('STALE event ' .. seq .. ' of ' .. id .. ' is not after ' .. previous)
  end
  previous = seq
end
redis.call('HSET', hash, 'write_id', write_id)
for k = 0, n - 1 do
  local at = 7 + 3 * k
  redis.call('XADD', stream, ARGV[at] .. '-0', 't', ARGV[at + 1], 'd', ARGV[at + 2])
end
if n > 0 then redis.call('HSET', hash, 'last_seq', previous) end
local first_change = 7 + 3 * n
if first_change > #ARGV then return previous end
local old = redis.call('HMGET', hash, 'status', 'created_us', 'owner', 'answer', 'conversation')
local changes = {}
for j = first_change, #ARGV, 2 do
  changes[ARGV[j]] = ARGV[j + 1]
  redis.call('HSET', hash, ARGV[j], ARGV[j + 1])
end
local score, owner = old[2], old[3]
if changes.status and changes.status ~= old[1] then
  redis.call('ZREM', p .. ':sessions:status:' .. old[1], id)
  redis.call('ZADD', p .. ':sessions:status:' .. changes.status, score, id)
end
if changes.answer and not old[4] then
  redis.call('ZADD', p .. ':answered', score, id)
  if owner then redis.call('ZADD', p .. ':answered:owner:' .. owner, score, id) end
end
-- Retention by TTL: once every turn of the conversation has finished, all its
-- keys count down together, so a conversation is never cut in half.
if retention > 0 and changes.status and not unfinished(changes.status) then
  local cid = old[5]
  local turns = p .. ':turns:' .. cid
  local sids = redis.call('ZRANGE', turns, 0, -1)
  for _, sid in ipairs(sids) do
    if unfinished(redis.call('HGET', p .. ':session:' .. sid, 'status')) then
      return previous
    end
  end
  local now = redis.call('TIME')
  local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + retention
  -- Records and turns outlive the deadline by a day so that the purge that drops
  -- them from the indexes can still read them; the bulky parts go on time.
  local slack = deadline + 86400000
  for _, sid in ipairs(sids) do
    redis.call('PEXPIREAT', p .. ':events:' .. sid, deadline)
    redis.call('PEXPIREAT', p .. ':checkpoint:' .. sid, deadline)
    redis.call('PEXPIREAT', p .. ':session:' .. sid, slack)
  end
  redis.call('PEXPIREAT', turns, slack)
  redis.call('ZADD', p .. ':expiring', deadline, cid)
end
return previous
"""
)

# Drops the conversations whose retention deadline has passed. ARGV: prefix, max count.
PURGE = (
    DROP
    + """
local p = ARGV[1]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local dropped = 0
for _, cid in ipairs(redis.call('ZRANGE', p .. ':expiring', '-inf', now_ms, 'BYSCORE',
    'LIMIT', 0, tonumber(ARGV[2]))) do
  dropped = dropped + drop_conversation(p, cid)
end
return dropped
"""
)

# Drops the given conversations unless one of their sessions is unfinished (checked
# again here: a turn may have been added since the caller looked). ARGV: prefix, ids.
PRUNE = (
    FINISHED_ONLY
    + DROP
    + """
local p = ARGV[1]
local dropped = 0
for i = 2, #ARGV do
  local cid = ARGV[i]
  local busy = false
  for _, sid in ipairs(redis.call('ZRANGE', p .. ':turns:' .. cid, 0, -1)) do
    if unfinished(redis.call('HGET', p .. ':session:' .. sid, 'status')) then busy = true end
  end
  if not busy then dropped = dropped + drop_conversation(p, cid) end
end
return dropped
"""
)

# Leases. ACQUIRE: ARGV token, ttl ms. Takes a free lease, or extends our own.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# RENEW: ARGV token, ttl ms. Only the holder may extend it.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# RELEASE: ARGV token. Only the holder may let go.
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# A checkpoint written only while the session exists and (when fenced) its lease is
# ours. KEYS: session hash, checkpoint, lease. ARGV: token ('' = unfenced), JSON.
SAVE_CHECKPOINT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOSESSION no session for this checkpoint')
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('LEASELOST the session is leased to another worker')
end
redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
return 1
"""


@dataclass(frozen=True)
class RedisKeys:
    """The key names for one prefix (see the module docstring)."""

    prefix: str = "deepresearch"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def events(self, session_id: str) -> str:
        return f"{self.prefix}:events:{session_id}"

    def checkpoint(self, session_id: str) -> str:
        return f"{self.prefix}:checkpoint:{session_id}"

    def lease(self, session_id: str) -> str:
        return f"{self.prefix}:lease:{session_id}"

    def turns(self, conversation_id: str) -> str:
        return f"{self.prefix}:turns:{conversation_id}"

    def sessions(self, *, status: str | None = None, owner: str | None = None) -> str:
        if status is not None:
            return f"{self.prefix}:sessions:status:{status}"
        if owner is not None:
            return f"{self.prefix}:sessions:owner:{owner}"
        return f"{self.prefix}:sessions"

    def answered(self, owner: str | None = None) -> str:
        return f"{self.prefix}:answered" + (f":owner:{owner}" if owner is not None else "")

    def conversations(self, owner: str | None = None) -> str:
        return f"{self.prefix}:conversations" + (f":owner:{owner}" if owner is not None else "")


# Fair queueing across keys (distributed mode), over saq's own lists: its queued list
# (job ids, first come first) and its active list (jobs taken and not finished). A
# job's key is its session id, so a job's owner is its record's ``owner`` ('' with
# keys off: then everything is one line and the order is saq's FIFO). The next job
# goes to the owner with the fewest jobs active, then the one served longest ago
# (``p:served``: owner -> a counter from ``p:served:clock``), then the earliest
# arrival; FIFO within an owner; an owner at its running quota (``cap`` > 0) waits.
# ``TAKE`` forgets (deletes from ``p:served``) the owners with nothing queued or running
# that were last served before every owner that has: one never served counts as 0, so
# a forgotten owner that comes back still ranks before each owner active when it was
# forgotten, exactly as its counter did; it only loses its order against owners new or
# forgotten too (the arrival decides between them). ``p:served`` so holds the owners
# active and those served since the oldest active one's last service.
FAIR = """
local function owner_of(p, job_prefix, jid)
  local sid = string.sub(jid, #job_prefix + 1)
  return redis.call('HGET', p .. ':session:' .. sid, 'owner') or ''
end
local function fair_state(p, job_prefix, queued, active)
  local running = {}
  for _, jid in ipairs(redis.call('LRANGE', active, 0, -1)) do
    local owner = owner_of(p, job_prefix, jid)
    running[owner] = (running[owner] or 0) + 1
  end
  local ids = redis.call('LRANGE', queued, 0, -1)
  local lines, owners = {}, {}
  for _, jid in ipairs(ids) do
    local owner = owner_of(p, job_prefix, jid)
    if not lines[owner] then
      lines[owner] = {}
      owners[#owners + 1] = owner
    end
    table.insert(lines[owner], jid)
  end
  return ids, running, lines, owners
end
local function served_at(p, owner)
  return tonumber(redis.call('HGET', p .. ':served', owner) or '0')
end
local function capped(cap, owner, count)
  return cap > 0 and owner ~= '' and count >= cap
end
local function before(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[3] < b[3]
end
"""

# Takes the next job fairly: moves it from saq's queued list to its active list (what
# saq's own dequeue does, first come first) and returns its id, or nil when nothing
# may start. ARGV: store prefix, saq's job id prefix, queued key, active key, cap.
TAKE = (
    FAIR
    + """
local p, job_prefix, queued, active, cap = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local ids, running, lines, owners = fair_state(p, job_prefix, queued, active)
local best, best_rank
for arrival, owner in ipairs(owners) do
  local count = running[owner] or 0
  if not capped(cap, owner, count) then
    local rank = {count, served_at(p, owner), arrival}
    if best == nil or before(rank, best_rank) then best, best_rank = owner, rank end
  end
end
if best == nil then return false end
local jid = lines[best][1]
redis.call('LREM', queued, 1, jid)
redis.call('RPUSH', active, jid)
local served = p .. ':served'
redis.call('HSET', served, best, redis.call('INCR', p .. ':served:clock'))
running[best] = (running[best] or 0) + 1
-- Forget the owners with nothing queued or running whose last service is older than
-- every active owner's (one never served counts as 0): a forgotten owner comes back
-- as never served (0), which keeps it before each of those, as its own counter did.
local oldest = math.huge
for owner, _ in pairs(running) do oldest = math.min(oldest, served_at(p, owner)) end
for owner, _ in pairs(lines) do oldest = math.min(oldest, served_at(p, owner)) end
local kept = redis.call('HGETALL', served)
for i = 1, #kept, 2 do
  local owner = kept[i]
  if not running[owner] and not lines[owner] and tonumber(kept[i + 1]) < oldest then
    redis.call('HDEL', served, owner)
  end
end
return jid
"""
)

# The order the queued jobs would start in, if nobody else arrived (queue positions):
# TAKE repeated, counting each planned start; jobs held back by their owner's running
# quota come last, by arrival. Read-only. ARGV as TAKE's.
PLAN = (
    FAIR
    + """
local p, job_prefix, queued, active, cap = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local ids, running, lines, owners = fair_state(p, job_prefix, queued, active)
local arrival_of = {}
for n, jid in ipairs(ids) do arrival_of[jid] = n end
local served, taken = {}, {}
for _, owner in ipairs(owners) do
  served[owner] = served_at(p, owner)
  taken[owner] = 0
end
local clock = tonumber(redis.call('GET', p .. ':served:clock') or '0')
local order, placed = {}, {}
while true do
  local best, best_rank
  for _, owner in ipairs(owners) do
    local head = lines[owner][taken[owner] + 1]
    local count = running[owner] or 0
    if head and not capped(cap, owner, count) then
      local rank = {count, served[owner], arrival_of[head]}
      if best == nil or before(rank, best_rank) then best, best_rank = owner, rank end
    end
  end
  if best == nil then break end
  taken[best] = taken[best] + 1
  local jid = lines[best][taken[best]]
  order[#order + 1] = jid
  placed[jid] = true
  running[best] = (running[best] or 0) + 1
  clock = clock + 1
  served[best] = clock
end
for _, jid in ipairs(ids) do
  if not placed[jid] then order[#order + 1] = jid end
end
return order
"""
)

# A second delivery of a job leaves saq's active list: one of the job's places there
# goes, only if it has more than one (the running delivery's stays, so a sweep still
# finds the job if that worker dies). KEYS: active list; ARGV: job id.
LEAVE_ACTIVE = """
if #redis.call('LPOS', KEYS[1], ARGV[1], 'COUNT', 2) > 1 then
  return redis.call('LREM', KEYS[1], 1, ARGV[1])
end
return 0
"""
