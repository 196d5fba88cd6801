"""Lua scripts that change presence and announce it in one atomic step.

Doing the set change, the sequence increment and the publish inside one script makes the
order of events on a channel's topic the order of the changes to its set, which is what
lets every worker's mirror converge on the same membership. Each script touches the keys
of one channel only (one hash slot), so it runs on a Redis Cluster shard as it does on a
single Redis. The publish command is an argument: PUBLISH, or SPUBLISH on a cluster.

A channel's sequence counter must not restart while any worker may still hold a mirror of
the channel, so it is not deleted when the channel empties: it gets a long TTL instead
(``SEQ_IDLE_TTL_MS``), which the next join removes. Idle channels leave nothing forever.

Envelopes are msgpack arrays ``[1, kind, channel, origin, ref, seq, payload, sent_at]``
(see ``codec.Envelope``).
"""

SEQ_IDLE_TTL_MS = 3_600_000

# KEYS: members set, seq counter, owners hash
# ARGV: publish command, topic, channel, origin worker, connection id, notify ("1"/"0"),
#       idle TTL in ms
JOIN = """
if redis.call('SADD', KEYS[1], ARGV[5]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[5], ARGV[4])
local seq = redis.call('INCR', KEYS[2])
redis.call('PERSIST', KEYS[2])
redis.call(ARGV[1], ARGV[2],
  cmsgpack.pack({1, 'j', ARGV[3], ARGV[4], ARGV[5], seq, ARGV[6] == '1', 0}))
return seq
"""

# Same KEYS and ARGV as JOIN.
LEAVE = """
redis.call('HDEL', KEYS[3], ARGV[5])
if redis.call('SREM', KEYS[1], ARGV[5]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[2])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('PEXPIRE', KEYS[2], ARGV[7]) end
redis.call(ARGV[1], ARGV[2],
  cmsgpack.pack({1, 'l', ARGV[3], ARGV[4], ARGV[5], seq, ARGV[6] == '1', 0}))
return seq
"""

# Removes every connection that ``dead worker`` holds in one channel, announcing each.
# KEYS: members set, seq counter, owners hash
# ARGV: publish command, topic, channel, reaping worker, dead worker, idle TTL in ms
REAP_CHANNEL = """
local owners = redis.call('HGETALL', KEYS[3])
local removed = 0
for i = 1, #owners, 2 do
  local conn, owner = owners[i], owners[i + 1]
  if owner == ARGV[5] then
    redis.call('HDEL', KEYS[3], conn)
    if redis.call('SREM', KEYS[1], conn) == 1 then
      removed = removed + 1
      local seq = redis.call('INCR', KEYS[2])
      redis.call(ARGV[1], ARGV[2],
        cmsgpack.pack({1, 'l', ARGV[3], ARGV[4], conn, seq, true, 0}))
    end
  end
end
if removed > 0 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return removed
"""

# The members of a channel and its sequence number, read at one instant.
# KEYS: members set, seq counter
SNAPSHOT = """
return {redis.call('SMEMBERS', KEYS[1]), redis.call('GET', KEYS[2])}
"""

# Stores a message in the channel's stream and announces it with the id it got, in one step.
# KEYS: the channel's stream
# ARGV: publish command, topic, envelope head (see codec.stored_envelope_head), payload
#       msgpack bytes, approximate length to keep, TTL in ms, msgpack of the publish time
STORE = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'p', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local receivers = redis.call(ARGV[1], ARGV[2],
  ARGV[3] .. cmsgpack.pack(id) .. cmsgpack.pack(0) .. ARGV[4] .. ARGV[7])
return {id, receivers}
"""

# Atomically claims a worker's presence for reaping: nothing if its heartbeat lives (unless
# forced), else the channels it had, which are then forgotten.
# KEYS: heartbeat, channels set
# ARGV: "1" to claim even a live worker (its own shutdown)
CLAIM = """
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return false end
local channels = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return channels
"""
