"""Lua scripts that change presence and announce it in one atomic step.

Doing the set change, the sequence increment and the PUBLISH inside one script makes the
order of events on a channel's topic the order of the changes to its set, which is what
lets every worker's mirror converge on the same membership.

A channel's sequence counter must not restart while any worker may still hold a mirror of
the channel, so it is not deleted when the channel empties: it gets a long TTL instead
(``SEQ_IDLE_TTL_MS``), which the next join removes. Idle channels leave nothing forever.
"""

SEQ_IDLE_TTL_MS = 3_600_000

# KEYS: members set, seq counter, worker's connections hash
# ARGV: topic, channel, origin worker, connection id, notify ("1"/"0"), idle TTL in ms
JOIN = """
if redis.call('SADD', KEYS[1], ARGV[4]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[2])
local seq = redis.call('INCR', KEYS[2])
redis.call('PERSIST', KEYS[2])
redis.call('PUBLISH', ARGV[1],
  cmsgpack.pack({1, 'j', ARGV[2], ARGV[3], ARGV[4], seq, ARGV[5] == '1', 0}))
return seq
"""

# Same KEYS and ARGV as JOIN.
LEAVE = """
redis.call('HDEL', KEYS[3], ARGV[4])
if redis.call('SREM', KEYS[1], ARGV[4]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[2])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
redis.call('PUBLISH', ARGV[1],
  cmsgpack.pack({1, 'l', ARGV[2], ARGV[3], ARGV[4], seq, ARGV[5] == '1', 0}))
return seq
"""

# Removes all presence of one worker, announcing each leave. Used by live workers to reap
# a worker whose heartbeat expired, and by a worker on its own graceful shutdown.
# KEYS: workers set, the worker's connections hash, the worker's heartbeat
# ARGV: key prefix, worker id, origin (who reaps), "1" to reap even if the heartbeat lives,
#       idle TTL in ms
REAP = """
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local entries = redis.call('HGETALL', KEYS[2])
local removed = 0
for i = 1, #entries, 2 do
  local conn, channel = entries[i], entries[i + 1]
  if redis.call('SREM', ARGV[1] .. ':channel:' .. channel, conn) == 1 then
    removed = removed + 1
    local seq_key = ARGV[1] .. ':seq:' .. channel
    local seq = redis.call('INCR', seq_key)
    if redis.call('SCARD', ARGV[1] .. ':channel:' .. channel) == 0 then
      redis.call('PEXPIRE', seq_key, ARGV[5])
    end
    redis.call('PUBLISH', ARGV[1] .. ':topic:' .. channel,
      cmsgpack.pack({1, 'l', channel, ARGV[3], conn, seq, true, 0}))
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[1], ARGV[2])
return removed
"""

# Stores a message in the channel's stream and announces it with the id it got, in one step.
# KEYS: the channel's stream
# ARGV: topic, envelope head (see codec.stored_envelope_head), payload msgpack bytes,
#       approximate length to keep, TTL in ms, msgpack of the publisher's timestamp
STORE = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'p', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local receivers = redis.call('PUBLISH', ARGV[1],
  ARGV[2] .. cmsgpack.pack(id) .. cmsgpack.pack(0) .. ARGV[3] .. ARGV[6])
return {id, receivers}
"""
