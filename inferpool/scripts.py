"""Every Lua script inferpool runs in Redis, with what its KEYS and ARGV are.

A script is registered once per client (``Script.register(client)``, redis-py's ``register_script``):
each call sends EVALSHA and the script's 40-byte digest, not its text, and reloads it by itself after a
Redis restart. Scripts name keys only through KEYS (never built from ARGV), so each call declares every
key it touches. An empty KEYS entry (``''``) means "none": the script skips that step.

The ledger (``keys.LEDGER``) is a hash of counters: accepted, succeeded, failed, duplicates, redelivered,
redispatched. A job hash holds status (queued, running, succeeded, failed), accepted (set once the job is
fully queued and counted), rows_done, chunks_done, n_chunks, started, finished, error and timing sums.
"""

from __future__ import annotations

from typing import Any, ClassVar

# Every kombu message names its task in properties.correlation_id, near its end (after the body).
TAIL_BYTES = 1024


class Script:
    """One Lua script; subclasses hold its text in ``source`` and say what KEYS and ARGV are."""

    source: ClassVar[str]

    @classmethod
    def register(cls, client: Any) -> Any:
        """The script bound to ``client`` (sync, async or a pipeline's client); calling it sends EVALSHA."""
        return client.register_script(cls.source)


class PublishPending(Script):
    """Push a pollable inline task, mark it pending and put it in flight, in one step.

    KEYS: 1 queue list, 2 pending marker (``batch_pending``), 3 result (``batch_result``), 4 ledger,
    5 the task's spec (``batch_spec``), 6 the in-flight set.
    ARGV: 1 the message, 2 now (epoch s, also the in-flight score), 3 TTL (s), 4 requests it carries,
    5 the spec (JSON), 6 its in-flight member.
    Returns 0 if it was already pending (a retry), else 1.
    The message goes on its queue first; then, once per task (SET NX), the requests count as accepted. The
    worker counts an outcome only if the marker exists, so a result that got here first (a re-sent copy) is
    counted here: each request counts as accepted and as succeeded/failed exactly once. Unfinished, the
    task is kept (rows and all) for the re-dispatcher.
    """

    source = """
redis.call('LPUSH', KEYS[1], ARGV[1])
if not redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3], 'NX') then return 0 end
redis.call('HINCRBY', KEYS[4], 'accepted', ARGV[4])
local r = redis.call('GET', KEYS[3])
if r then
  local outcome = cjson.decode(r)['error'] and 'failed' or 'succeeded'
  redis.call('HINCRBY', KEYS[4], outcome, ARGV[4])
else
  redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[3])
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[6])
end
return 1
"""


class AcceptJob(Script):
    """Count a fully queued job as accepted, once; put it in flight unless it already ended.

    KEYS: 1 the job hash, 2 the ledger, 3 the in-flight set.
    ARGV: 1 now (epoch s, the in-flight score), 2 the job's in-flight member.
    Returns -1 if the job hash is gone, 0 if it was accepted before, 1 now.
    A job counts as accepted once all its chunks are on the queue, and only once (HSETNX); one that already
    finished (its chunks can outrun this call) has its outcome counted here, because the workers count
    outcomes only of accepted jobs. A failed submit thus leaves the ledger as it was. An unfinished job
    joins the in-flight set, where the re-dispatcher watches it.
    """

    source = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[1], 'accepted', 1) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'accepted', 1)
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' then
  redis.call('HINCRBY', KEYS[2], st, 1)
else
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
end
return 1
"""


class ClaimSwap(Script):
    """Replace an idempotency claim's value if it still holds ours.

    KEYS: 1 the claim. ARGV: 1 our value, 2 the new value, 3 its TTL (ms). Returns 1 if swapped, else 0.
    """

    source = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class ClaimRenew(Script):
    """Extend an idempotency claim's lease if it still holds ours.

    KEYS: 1 the claim. ARGV: 1 our value, 2 the lease (ms). Returns 1 if renewed, else 0.
    """

    source = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


class ClaimDrop(Script):
    """Delete an idempotency claim if it still holds ours.

    KEYS: 1 the claim. ARGV: 1 our value. Returns 1 if deleted, else 0.
    """

    source = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class QuotaTake(Script):
    """Token buckets of one API key: take every cost, or none and say how long to wait.

    KEYS: one bucket hash per resource (fields ``t`` tokens, ``ts`` last refill, ms).
    ARGV: 1 now (epoch ms), then per bucket i: rate per s, capacity, cost (ARGV[3i-1], ARGV[3i], ARGV[3i+1]).
    Returns {0, 0} when charged, else {ms until the costs would pass, bitmask of the buckets short}.
    Buckets expire once full again.
    """

    source = """
local now = tonumber(ARGV[1])
local levels, wait, short = {}, 0, 0
for i, key in ipairs(KEYS) do
  local rate, cap, cost = tonumber(ARGV[3*i - 1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i + 1])
  local h = redis.call('HMGET', key, 't', 'ts')
  local t = tonumber(h[1]) or cap
  local ts = tonumber(h[2]) or now
  t = math.min(cap, t + math.max(0, now - ts) * rate / 1000)
  levels[i] = t
  local need = math.min(cost, cap)
  if t < need then
    wait = math.max(wait, (need - t) * 1000 / rate)
    short = short + 2 ^ (i - 1)
  end
end
if wait > 0 then return {math.ceil(wait), short} end
for i, key in ipairs(KEYS) do
  local rate, cap, cost = tonumber(ARGV[3*i - 1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i + 1])
  redis.call('HSET', key, 't', levels[i] - cost, 'ts', now)
  redis.call('PEXPIRE', key, math.ceil((cap - levels[i] + cost) * 1000 / rate) + 1000)
end
return {0, 0}
"""


class FindMessages(Script):
    """Which of some task ids have a message in one queue list or in kombu's unacked hash, one page.

    KEYS: 1 a queue list or the unacked hash.
    ARGV: 1 kind (``list`` | ``hash``), 2 first index, 3 page size, 4... the task ids wanted.
    Returns the index to go on from (-1 at the end), then the ids found there. A message's task id is
    looked for in its last ``TAIL_BYTES`` first (where kombu puts properties), then anywhere.
    """

    source = (
        """
local want = {}
for i = 4, #ARGV do want[ARGV[i]] = true end
local start, page = tonumber(ARGV[2]), tonumber(ARGV[3])
local msgs, next_start
if ARGV[1] == 'hash' then
  msgs, next_start = redis.call('HVALS', KEYS[1]), -1
else
  msgs = redis.call('LRANGE', KEYS[1], start, start + page - 1)
  next_start = (#msgs < page) and -1 or (start + page)
end
local out = {next_start}
local pattern = '"correlation_id": ?"([^"]*)"'
for _, m in ipairs(msgs) do
  local id = string.match(m, pattern, math.max(1, #m - """
        + str(TAIL_BYTES)
        + """)) or string.match(m, pattern)
  if id and want[id] then
    out[#out + 1] = id
    want[id] = nil
  end
end
return out
"""
    )


class RestoreHeld(Script):
    """Put a message a worker took and never acked back on its queue, if it is still held as it was read.

    KEYS: 1 kombu's unacked hash, 2 its index (delivery tag -> time taken), 3 the queue list to push to.
    ARGV: 1 the delivery tag, 2 the hash entry as read, 3 the message to push (flagged redelivered).
    Returns 1 if put back, 0 if its worker acked it (or another sweep put it back) since it was read.
    What kombu's own restore does for one tag, with the read checked: two sweeps never push it twice.
    """

    source = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if held ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
"""


class ReleaseLock(Script):
    """Release a lock only if it still holds our token.

    KEYS: 1 the lock. ARGV: 1 our token. Returns 1 if released, else 0.
    A sweep that outlived the lock's TTL must not release a lock another worker has taken since.
    """

    source = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class FinishChunk(Script):
    """Store a job chunk's predictions and count it, once; the last chunk finishes the job.

    KEYS: 1 the job hash, 2 its done-chunks set, 3 the ledger, 4 the chunk's input, 5 the in-flight set,
    6 the chunk's output, 7 the queue's task-samples stream (``''``: no sample).
    ARGV: 1 chunk index, 2 rows, 3 TTL (s), 4 now (epoch s), 5 queue wait (s), 6 run time (s),
    7 the job's in-flight member, 8 the predictions (bytes), 9 the stream's MAXLEN.
    Returns -2 if the job hash is gone, -1 for a duplicate, else the chunks done.
    The output is written first (a later copy writes the same bytes). The outcome counts in the ledger only
    once the API has accepted the job (AcceptJob counts it then if it finished first); a job whose hash
    expired is left alone rather than rebuilt without a TTL. A finished chunk is progress: the job's mark
    in the in-flight set moves on (or goes, with the job). One sample per task goes to the queue's stream:
    the scaler's signal.
    """

    source = """
redis.call('SET', KEYS[6], ARGV[8], 'EX', ARGV[3])
if KEYS[7] ~= '' then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', 'w', ARGV[5], 'r', ARGV[6])
end
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local added = redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if added == 0 then
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
  return -1
end
redis.call('DEL', KEYS[4])  -- done: its rows need not wait out the TTL (a later copy sees it done)
redis.call('HINCRBY', KEYS[1], 'rows_done', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[1], 'queue_wait_sum_s', ARGV[5])
redis.call('HINCRBYFLOAT', KEYS[1], 'run_sum_s', ARGV[6])
local done = redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
local total = tonumber(redis.call('HGET', KEYS[1], 'n_chunks'))
if done == total then
  redis.call('ZREM', KEYS[5], ARGV[7])
  if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then
    redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished', ARGV[4])
    if redis.call('HEXISTS', KEYS[1], 'accepted') == 1 then redis.call('HINCRBY', KEYS[3], 'succeeded', 1) end
  end
else
  redis.call('ZADD', KEYS[5], 'XX', ARGV[4], ARGV[7])
end
return done
"""


class FinishInline(Script):
    """Store an inline task's reply, once: hand it to the waiting API process, count it, end its flight.

    KEYS: 1 the result, 2 the ledger, 3 the caller's reply list (``''``: nobody waits), 4 the pending
    marker, 5 the task's spec, 6 the in-flight set, 7 the queue's task-samples stream (``''``: no sample).
    ARGV: 1 the reply (JSON), 2 TTL (s), 3 requests it carries, 4 outcome (ledger field: ``succeeded`` |
    ``failed``), 5 its in-flight member, 6 queue wait (s), 7 run time (s), 8 the stream's MAXLEN.
    Returns 1 for the first completion, 0 for a duplicate.
    One round trip: the answer goes out first, the first completion alone counts in the ledger, and only
    if the API has marked the requests accepted (if the marker comes later, PublishPending counts it then).
    """

    source = """
if KEYS[3] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[3], 300)
end
if KEYS[7] ~= '' then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[8], '*', 'w', ARGV[6], 'r', ARGV[7])
end
if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then
  if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[4], ARGV[3]) end
  redis.call('DEL', KEYS[5])
  redis.call('ZREM', KEYS[6], ARGV[5])
  return 1
end
redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
return 0
"""


class StartChunk(Script):
    """A chunk starts: a queued job becomes running, and its in-flight entry records the progress.

    KEYS: 1 the job hash, 2 the in-flight set. ARGV: 1 now (epoch s), 2 the job's in-flight member.
    Moves queued -> running, never back from an end state.
    """

    source = """
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started', ARGV[1])
end
redis.call('ZADD', KEYS[2], 'XX', ARGV[1], ARGV[2])
return 1
"""


class FailJob(Script):
    """Fail a job that has not ended, once, and count it if it was accepted.

    KEYS: 1 the job hash, 2 the ledger, 3 the in-flight set.
    ARGV: 1 the error, 2 now (epoch s), 3 the job's in-flight member. Returns 1 if failed now, else 0.
    """

    source = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or not st then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[1], 'finished', ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[3])
if redis.call('HEXISTS', KEYS[1], 'accepted') == 1 then redis.call('HINCRBY', KEYS[2], 'failed', 1) end
return 1
"""


class HoldLock(Script):
    """Take a lock if it is free, or renew it if we hold it (the rollout's verdict loop: one API at a time).

    KEYS: 1 the lock. ARGV: 1 our owner token, 2 the lease (ms). Returns 1 if we hold it now, else 0.
    """

    source = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""


class ReplacePlan(Script):
    """Write a rollout plan only if the stored one still has the revision the writer read.

    KEYS: 1 the plan (``keys.ROLLOUT_PLAN``). ARGV: 1 the expected revision (-1: no plan yet), 2 the new plan
    (JSON). Returns 1 if written, 0 if another writer changed it first.
    """

    source = """
local cur = redis.call('GET', KEYS[1])
local rev = -1
if cur then rev = cjson.decode(cur)['rev'] end
if rev ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
