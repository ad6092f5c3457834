"""The job and batch state transitions, each one Lua script run atomically in Redis (compare-and-set).

Every script starts with _KEYS, which defines the key prefixes of shared/keys.py as Lua locals
(K_JOB, K_QUEUED, ...): the Lua names no key itself. JobStore and BatchStore register these scripts;
nothing else runs them.
"""

import json

from shared import keys, usage

# Lua locals named after shared/keys.py's prefixes; json.dumps gives a valid Lua string literal.
_KEYS = "".join(f"local K_{name} = {json.dumps(value)}\n" for name, value in keys.LUA_PREFIXES.items())

# KEYS: job, model's queued zset, tenant's queued zset, tenant's job list (zset).
# ARGV: job id, max queued per model, now, ttl, max queued per tenant (0 = no limit), field/value pairs...
CREATE = (
    _KEYS
    + """
if tonumber(ARGV[2]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 'full' end
if tonumber(ARGV[5]) > 0 and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return 'tenant_full' end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[4], ARGV[4])
return 'ok'
"""
)

# A batch and all its jobs, stored in one step or not at all: the queued caps are checked for the
# whole batch first, so no partial batch is ever stored (its messages are enqueued after this).
# KEYS: batch, batch items. ARGV: now, ttl, max queued per model, max queued per tenant (0 = no
# limit), tenant, then counted groups: models (name, jobs), batch fields (pairs), items (JSON),
# and last every job as id, model, field count, fields (pairs).
CREATE_BATCH = (
    _KEYS
    + """
local now, ttl, tenant = ARGV[1], ARGV[2], ARGV[5]
local max_model, max_tenant = tonumber(ARGV[3]), tonumber(ARGV[4])
local i = 6
local total = 0
for _ = 1, tonumber(ARGV[i]) do
  local m, n = ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 2
  total = total + n
  if max_model > 0 and redis.call('ZCARD', K_QUEUED .. m) + n > max_model then return {'full', m} end
end
i = i + 1
if max_tenant > 0 and redis.call('ZCARD', K_TENANT_QUEUED .. tenant) + total > max_tenant then
  return {'tenant_full', tenant}
end
local n = tonumber(ARGV[i])
redis.call('HSET', KEYS[1], unpack(ARGV, i + 1, i + n))
redis.call('EXPIRE', KEYS[1], ttl)
i = i + n + 1
n = tonumber(ARGV[i])
for first = i + 1, i + n, 500 do  -- in slices: unpack() has a stack limit
  redis.call('RPUSH', KEYS[2], unpack(ARGV, first, math.min(first + 499, i + n)))
end
redis.call('EXPIRE', KEYS[2], ttl)
i = i + n + 1
local jobs = K_TENANT_JOBS .. tenant
while i <= #ARGV do
  local id, m, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local job = K_JOB .. id
  redis.call('HSET', job, unpack(ARGV, i + 3, i + 2 + nf))
  redis.call('EXPIRE', job, ttl)
  redis.call('ZADD', K_QUEUED .. m, now, id)
  redis.call('ZADD', K_TENANT_QUEUED .. tenant, now, id)
  redis.call('ZADD', jobs, now, id)
  i = i + 3 + nf
end
redis.call('ZREMRANGEBYSCORE', jobs, '-inf', tonumber(now) - tonumber(ttl))
redis.call('EXPIRE', jobs, ttl)
return {'ok'}
"""
)

# Leases and deadlines are timed by Redis's clock, not a worker's: a worker host whose clock is
# off by minutes neither loses its leases early nor keeps them too long. (Redis 7 replicates a
# script's effects, so TIME may precede writes.)
_CLOCK = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# Fencing: a worker's claim on a job is the attempt number its claim made; a write carrying an
# older attempt (a worker that was paused or cut off while the job was requeued and run
# elsewhere), or made after the job ended, is dropped.
_FENCE = """
local function holds(job, attempt)
  local st, n = unpack(redis.call('HMGET', job, 'status', 'attempts'))
  return st == 'running' and n == attempt
end
"""

# Leaving the queued state: drop the job from its model's and its tenant's queued sets.
_UNQUEUE = """
local function unqueue(job, id)
  local m, t = unpack(redis.call('HMGET', job, 'model', 'tenant'))
  redis.call('ZREM', K_QUEUED .. m, id)
  redis.call('ZREM', K_TENANT_QUEUED .. (t or 'default'), id)
end
"""

# A job (or batch) whose webhook wants this event gets a delivery due now, in the same step as
# the state change, so no event is lost between the two; a worker's sender POSTs it
# (worker/webhooks.py). The delivery id stays the same across retries (receivers deduplicate on it).
_NOTIFY = (
    usage.LUA
    + """
local function schedule(key, kind, id, event, delivery, now)
  local url, events = unpack(redis.call('HMGET', key, 'webhook_url', 'webhook_events'))
  if not url or not string.find(',' .. events .. ',', ',' .. event .. ',', 1, true) then return end
  local d = {id = delivery, event = event, attempt = 1, url = url}
  d[kind .. '_id'] = id
  redis.call('ZADD', K_WEBHOOKS_DUE, now, cjson.encode(d))
  redis.call('HSET', key, 'webhook:' .. event, cjson.encode({status = 'pending', attempts = 0}))
end
-- A job's delivery id names its attempt: a rerun after a lost worker starts again.
local function notify(job, id, event, now)
  local n = redis.call('HGET', job, 'attempts') or '0'
  schedule(job, 'job', id, event, id .. ':' .. event .. ':' .. n, now)
end
-- A batch's events happen once each.
local function notify_batch(batch, id, event, now)
  schedule(batch, 'batch', id, event, id .. ':' .. event, now)
end
-- A job of a batch started: the first one to do so starts the batch. (A batch whose record is
-- gone, expired or withdrawn, is never written to again, so no key is left without a TTL.)
local function batch_started(job, now)
  local b = redis.call('HGET', job, 'batch')
  if not b then return end
  local key = K_BATCH .. b
  if redis.call('EXISTS', key) == 1 and redis.call('HSETNX', key, 'started_at', now) == 1 then
    notify_batch(key, b, 'started', now)
  end
end
-- A job of a batch ended (once per job: every caller is a compare-and-set): the last one to do
-- so ends the batch.
local function batch_ended(job, now)
  local b = redis.call('HGET', job, 'batch')
  if not b then return end
  local key = K_BATCH .. b
  if redis.call('EXISTS', key) == 0 then return end
  if redis.call('HINCRBY', key, 'ended', 1) == tonumber(redis.call('HGET', key, 'total')) then
    redis.call('HSET', key, 'finished_at', now)
    notify_batch(key, b, 'completed', now)
  end
end
-- Every terminal transition ends here, once: counted for /metrics (shared/metrics.py), the done
-- event that closes streams, the ended entry that wakes long polls (they skip the token events),
-- the completed webhook, the job's batch, and its tenant's and key's usage (shared/usage.py).
local function ended(job, events, id, status, now)
  local m = redis.call('HGET', job, 'model')
  local ttl = redis.call('TTL', job)
  redis.call('SADD', K_METRICS_MODELS, m)
  redis.call('HINCRBY', K_METRICS_JOBS .. m, status, 1)
  redis.call('XADD', events, '*', 'type', 'done', 'data', status)
  redis.call('EXPIRE', events, ttl)
  local over = K_JOB .. id .. K_ENDED_SUFFIX
  redis.call('XADD', over, '*', 'status', status)
  redis.call('EXPIRE', over, ttl)
  notify(job, id, 'completed', now)
  batch_ended(job, now)
  count_usage(job, status, now)
end
"""
)

# queued → running, only from queued: a cancelled or finished job never starts; a job past its
# deadline fails as expired instead. Returns {outcome, attempt}: the attempt is the claim's
# fencing token, which the worker's later writes carry. KEYS: job, events, running zset.
# ARGV: job id, worker, device, lease (seconds), expired-error JSON.
CLAIM = (
    _KEYS
    + _CLOCK
    + _UNQUEUE
    + _NOTIFY
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' then return {st or false, 0} end
local now = clock()
unqueue(KEYS[1], ARGV[1])
local ttl = redis.call('TTL', KEYS[1])
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if deadline and now > tonumber(deadline) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', now, 'error', ARGV[5])
  ended(KEYS[1], KEYS[2], ARGV[1], 'failed', now)
  return {'expired', 0}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', now, 'worker', ARGV[2], 'device', ARGV[3],
  'streamed', 0, 'lpstreamed', 0)
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
redis.call('XADD', KEYS[2], '*', 'type', 'status', 'data', 'running')
redis.call('EXPIRE', KEYS[2], ttl)
notify(KEYS[1], ARGV[1], 'started', now)
batch_started(KEYS[1], now)
-- The record as claimed, in the same step: the worker needs no second round trip to read it.
return {'claimed', attempt, redis.call('HGETALL', KEYS[1])}
"""
)

# A worker's leases, extended by one lease from Redis's now; returns the ids it no longer holds
# (ended, or requeued and claimed again). KEYS: running zset. ARGV: lease (seconds), then
# job id, attempt pairs.
RENEW = (
    _KEYS
    + _CLOCK
    + _FENCE
    + """
local expiry = clock() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  if holds(K_JOB .. ARGV[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

# One engine step's new text, for every row at once (one round trip): each row's text is
# appended only while its worker still holds the job; returns the ids it no longer holds. Each
# row says at which byte of the attempt's text it starts, so a retry after a lost reply appends
# only what is not on the stream yet ('streamed' counts the bytes, reset by each claim).
# A row of a job that asked for log-probabilities also carries their entries (JSON objects, one
# line each) and the event field they go in; then entries are the unit of progress instead
# ('lpstreamed' counts them): a retry skips the entries, and the bytes of text, already there.
# KEYS: job, events pairs. ARGV: events TTL (seconds), then job id, attempt, offset ('' = at the
# end), text, entry offset ('' = at the end), entries' event field, entries ('' = none).
PUBLISH = (
    _KEYS
    + """
local lost = {}
for k = 1, #KEYS, 2 do
  local a = 2 + (k - 1) / 2 * 7
  local job = KEYS[k]
  local st, n, have, had = unpack(redis.call('HMGET', job, 'status', 'attempts', 'streamed', 'lpstreamed'))
  if st == 'running' and n == ARGV[a + 1] then
    local text, lines = ARGV[a + 3], ARGV[a + 6]
    have = tonumber(have or '0')
    local offset = tonumber(ARGV[a + 2]) or have  -- '': right after what is there
    local event = nil
    if lines == '' then
      if offset + #text > have then event = {'type', 'token', 'data', text} end
    else
      had = tonumber(had or '0')
      local from = tonumber(ARGV[a + 4]) or had
      local count = select(2, string.gsub(lines, '\\n', '')) + 1
      if from + count > had then
        local at = 1
        for _ = 1, had - from do at = string.find(lines, '\\n', at, true) + 1 end
        local list = '[' .. string.gsub(string.sub(lines, at), '\\n', ',') .. ']'
        event = {'type', 'token', 'data', text, ARGV[a + 5], list}
        redis.call('HSET', job, 'lpstreamed', from + count)
      end
    end
    if event then
      if have > offset then event[4] = string.sub(text, have - offset + 1) end
      redis.call('XADD', KEYS[k + 1], '*', unpack(event))
      redis.call('EXPIRE', KEYS[k + 1], ARGV[1])
      redis.call('HSET', job, 'streamed', math.max(have, offset + #text))  -- never backwards
    end
  else
    table.insert(lost, ARGV[a])
  end
end
return lost
"""
)

# Any non-terminal state → a terminal one, written once, then the done event. A worker may
# finish only the attempt it holds (not a job requeued after its lease lapsed and run elsewhere);
# the job's metrics (hash increments) are added in the same step, so a fenced-out result counts
# nothing. Returns 'ok' ('ok_without_metrics' when an increment failed), else why not.
# KEYS: job, events, running zset. ARGV: job id, fields JSON, worker ('' = any),
# attempt ('' = any), metrics JSON ([op, key, field, amount] list), terminal statuses...
FINISH = (
    _KEYS
    + _UNQUEUE
    + _NOTIFY
    + _FENCE
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
for i = 6, #ARGV do if st == ARGV[i] then return st end end
if ARGV[3] ~= '' and (st ~= 'running' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[3]) then
  return 'not_holder'
end
if ARGV[4] ~= '' and not holds(KEYS[1], ARGV[4]) then return 'not_holder' end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZREM', KEYS[3], ARGV[1])
unqueue(KEYS[1], ARGV[1])
ended(KEYS[1], KEYS[2], ARGV[1], fields['status'], fields['finished_at'])
-- Last, and with pcall: a failing increment (a key of the wrong type) costs the figures only.
local failed = 0
for _, op in ipairs(cjson.decode(ARGV[5])) do
  if op[1] == 'HINCRBY' or op[1] == 'HINCRBYFLOAT' then
    local done = redis.pcall(op[1], op[2], op[3], op[4])
    if type(done) == 'table' and done.err then failed = failed + 1 end
  end
end
if failed > 0 then return 'ok_without_metrics' end
return 'ok'
"""
)

# A queued job is cancelled at once; a running one is flagged for its worker to stop.
# KEYS: job, events. ARGV: job id, now.
CANCEL = (
    _KEYS
    + _UNQUEUE
    + _NOTIFY
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
  unqueue(KEYS[1], ARGV[1])
  ended(KEYS[1], KEYS[2], ARGV[1], 'cancelled', ARGV[2])
  return 'cancelled'
end
if st == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return st
"""
)

# A running job whose lease lapsed (its worker died) goes back to its queue, run alone next
# time; past the attempts limit it fails as worker_lost. KEYS: job, events, running zset.
# ARGV: job id, max attempts, worker_lost-error JSON, and optionally the worker holding it:
# then its lease need not have lapsed (a worker hands back the jobs of a batch step that failed).
REQUEUE = (
    _KEYS
    + _CLOCK
    + _NOTIFY
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' then redis.call('ZREM', KEYS[3], ARGV[1]) return st or false end
local now = clock()
local lease = redis.call('ZSCORE', KEYS[3], ARGV[1])
local handed = ARGV[4] and ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'worker') == ARGV[4]
if lease and tonumber(lease) > now and not handed then return 'alive' end
redis.call('ZREM', KEYS[3], ARGV[1])
local ttl = redis.call('TTL', KEYS[1])
local final = nil
if redis.call('HGET', KEYS[1], 'cancel') then
  final = 'cancelled'
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now)
elseif tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') >= tonumber(ARGV[2]) then
  final = 'failed'
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', now, 'error', ARGV[3])
end
if final then
  ended(KEYS[1], KEYS[2], ARGV[1], final, now)
  return final
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'isolate', '1')
local m, t = unpack(redis.call('HMGET', KEYS[1], 'model', 'tenant'))
redis.call('ZADD', K_QUEUED .. m, now, ARGV[1])
redis.call('ZADD', K_TENANT_QUEUED .. (t or 'default'), now, ARGV[1])
-- Streams restart: clients drop the text of the lost attempt on a reset event.
redis.call('XADD', KEYS[2], '*', 'type', 'reset', 'data', 'queued')
redis.call('EXPIRE', KEYS[2], ttl)
return 'requeued'
"""
)

# An Idempotency-Key bound to what its first request never created (that request's process, or
# Redis, died in between) passes to a retry, once: compare-and-set on the binding.
# KEYS: the key's binding. ARGV: the binding seen, the new binding, TTL (seconds).
REBIND_IDEMPOTENCY = (
    _KEYS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
)

# A queued job past its deadline fails as expired, in one step: a read that finds it overdue
# expires it at once (no worker or sweep needed), and a worker claiming it meanwhile cannot win
# the race. KEYS: job, events. ARGV: job id, now, expired-error JSON.
EXPIRE = (
    _KEYS
    + _UNQUEUE
    + _NOTIFY
    + """
local st, deadline = unpack(redis.call('HMGET', KEYS[1], 'status', 'deadline'))
if st ~= 'queued' then return st or false end
if not deadline or tonumber(ARGV[2]) <= tonumber(deadline) then return 'queued' end
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[3])
unqueue(KEYS[1], ARGV[1])
ended(KEYS[1], KEYS[2], ARGV[1], 'failed', ARGV[2])
return 'expired'
"""
)

# Release a lock only if this holder still holds it (it may have lapsed and been taken).
# KEYS: lock. ARGV: holder's token.
UNLOCK = (
    _KEYS
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)

# Remove a job that was stored but could not be enqueued (or whose batch was withdrawn), if it is
# still queued. DEL and ZREM come first: Redis lets a script that starts with them run when it is
# out of memory, so a refused submission never leaves a record behind. KEYS: job, events, ended.
# ARGV: job id. Returns 'deleted', else the status that keeps it (false if there is no record).
DELETE_QUEUED = (
    _KEYS
    + """
local st, m, t = unpack(redis.call('HMGET', KEYS[1], 'status', 'model', 'tenant'))
if not st then return false end
if st ~= 'queued' then return st end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
t = t or 'default'
redis.call('ZREM', K_QUEUED .. m, ARGV[1])
redis.call('ZREM', K_TENANT_QUEUED .. t, ARGV[1])
redis.call('ZREM', K_TENANT_JOBS .. t, ARGV[1])
return 'deleted'
"""
)
