"""Lua scripts that change presence and announce it in one atomic step.

Doing the set change, the sequence increment and the publish inside one script makes the
order of events on a channel's topic the order of the changes to its set, which is what
lets every worker's mirror converge on the same membership. Each script touches the keys
of one channel only (one hash slot), so it runs on a Redis Cluster shard as it does on a
single Redis. The publish command is an argument: PUBLISH, or SPUBLISH on a cluster.

A channel's sequence counter must not restart while any worker may still hold a mirror of
the channel, so it is not deleted when the channel empties: it gets a long TTL instead
(``SEQ_IDLE_TTL_MS``), which the next join removes. Idle channels leave nothing forever.

Every entry records its owner: the worker *instance* that registered it (the worker's id
and an epoch, which a worker bumps when it finds a peer claimed its presence), so that a
reaper removes only what the instance it claimed had registered, never a newer entry.

Envelopes are msgpack arrays ``[1, kind, channel, origin, ref, seq, payload, sent_at]``
(see ``envelope.Envelope``). A join or leave's payload is ``notify``, or ``[notify, metadata]``
when the connection has presence metadata (JSON text, kept in the channel's ``meta`` hash).
Joins and leaves recorded together go out as one BATCH envelope (``membership.py``).
"""

from __future__ import annotations

from typing import Any, cast

import msgpack  # type: ignore[import-untyped]

from ...envelope import ENVELOPE_VERSION, EventKind
from ...errors import MalformedMessageError

SEQ_IDLE_TTL_MS = 3_600_000
#: Milliseconds a channel remembers the ids of the publications it stored, so that a
#: store retried after a timeout (the first attempt may have run) is not stored twice.
STORED_IDS_WINDOW_MS = 300_000

# Joins and leaves of one channel, recorded together and announced as one BATCH envelope
# whose payload lists ``[kind, connection id, seq, payload]`` per change (membership.py).
# A join is announced even when the connection is a member already (a reconciliation
# registered it first, or a retry ran twice); a leave only if it removed a member.
# KEYS: members set, seq counter, owners hash, metadata hash, and on a single Redis (where
#       keys of several slots may meet in one script) the worker's connections hash, then
#       the connections sets of the users the changes name
# ARGV: publish command, topic, channel, owner instance, idle TTL in ms, then six per change:
#       'j' or 'l', connection id, notify ('1'/'0'), metadata JSON ('' for none), the
#       directory entry's value ('' to leave the directory alone), the index in KEYS of its
#       user's set (0 for none)
CHANGES = """
local changes = {}
for i = 6, #ARGV, 6 do
  local conn, notify, meta, entry = ARGV[i + 1], ARGV[i + 2] == '1', ARGV[i + 3], ARGV[i + 4]
  local user = tonumber(ARGV[i + 5])
  if ARGV[i] == 'j' then
    if KEYS[5] and entry ~= '' then redis.call('HSET', KEYS[5], conn, entry) end
    if user > 0 then redis.call('SADD', KEYS[user], conn) end
    redis.call('HSET', KEYS[3], conn, ARGV[4])
    local payload = notify
    if meta ~= '' then
      redis.call('HSET', KEYS[4], conn, meta)
      payload = {notify, meta}
    end
    redis.call('SADD', KEYS[1], conn)
    changes[#changes + 1] = {'j', conn, redis.call('INCR', KEYS[2]), payload}
  else
    if user > 0 then redis.call('SREM', KEYS[user], conn) end
    if KEYS[5] and entry ~= '' then redis.call('HDEL', KEYS[5], conn) end
    redis.call('HDEL', KEYS[3], conn)
    local old = redis.call('HGET', KEYS[4], conn)
    redis.call('HDEL', KEYS[4], conn)
    if redis.call('SREM', KEYS[1], conn) == 1 then
      local payload = notify
      if old then payload = {notify, old} end
      changes[#changes + 1] = {'l', conn, redis.call('INCR', KEYS[2]), payload}
    end
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
else
  redis.call('PERSIST', KEYS[2])
end
if #changes > 0 then
  local last = changes[#changes][3]
  redis.call(ARGV[1], ARGV[2], cmsgpack.pack({1, 'b', ARGV[3], ARGV[4], '', last, changes, 0}))
end
return #changes
"""

# Removes every connection that a dead worker instance holds in one channel, announced as
# one BATCH envelope.
# KEYS: members set, seq counter, owners hash, metadata hash
# ARGV: publish command, topic, channel, reaping worker, dead instance, idle TTL in ms
REAP_CHANNEL = """
local owners = redis.call('HGETALL', KEYS[3])
local changes = {}
for i = 1, #owners, 2 do
  local conn, owner = owners[i], owners[i + 1]
  if owner == ARGV[5] then
    redis.call('HDEL', KEYS[3], conn)
    local meta = redis.call('HGET', KEYS[4], conn)
    redis.call('HDEL', KEYS[4], conn)
    if redis.call('SREM', KEYS[1], conn) == 1 then
      local payload = true
      if meta then payload = {true, meta} end
      changes[#changes + 1] = {'l', conn, redis.call('INCR', KEYS[2]), payload}
    end
  end
end
if #changes > 0 then
  if redis.call('SCARD', KEYS[1]) == 0 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
  local last = changes[#changes][3]
  redis.call(ARGV[1], ARGV[2], cmsgpack.pack({1, 'b', ARGV[3], ARGV[4], '', last, changes, 0}))
end
return #changes
"""

# The members of a channel, its sequence number and its metadata, read at one instant.
# KEYS: members set, seq counter, metadata hash
SNAPSHOT = """
return {redis.call('SMEMBERS', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('HGETALL', KEYS[3])}
"""

# Stores a message in the channel's stream and announces it with the id it got, in one step;
# a publication id stored within the window before is not stored or announced again.
# KEYS: the channel's stream, the channel's recently stored publication ids (sorted set)
# ARGV: publish command, topic, envelope head (see stored_envelope_head below), payload
#       msgpack bytes, approximate length to keep, TTL in ms, msgpack of the publish time,
#       publication id, window in ms, and optionally the payload as announced (an excluding
#       envelope's ``[excluded id, payload]``)
STORE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - tonumber(ARGV[9]))
if redis.call('ZSCORE', KEYS[2], ARGV[8]) then return {false, 0} end
redis.call('ZADD', KEYS[2], now_ms, ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'p', ARGV[4])
if fresh then
  -- A new stream, or one Redis lost and this recreates: it vouches for nothing before it.
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XSETID', KEYS[1], id, 'ENTRIESADDED', 1, 'MAXDELETEDID', (ms - 1) .. '-0')
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local announced = ARGV[10] or ARGV[4]
local receivers = redis.call(ARGV[1], ARGV[2],
  ARGV[3] .. cmsgpack.pack(id) .. cmsgpack.pack(0) .. announced .. ARGV[7])
return {id, receivers}
"""

# The STORE script appends to bytes these helpers make: they mirror its layout.


def stored_envelope_head(channel: str, origin: str, *, excluding: bool = False) -> bytes:
    """The first four items of a STORED envelope, with the array header for all eight.

    Redis appends the stream id, the sequence, the payload bytes and ``sent_at`` inside the
    script that stores the message, so that the id it announces is the id it stored.
    """
    head = b"".join(
        cast(bytes, msgpack.packb(item, use_bin_type=True))
        for item in (
            ENVELOPE_VERSION,
            "y" if excluding else EventKind.STORED.value,
            channel,
            origin,
        )
    )
    return b"\x98" + head  # fixarray of 8


def packed_timestamp(seconds: float) -> bytes:
    """``sent_at`` as msgpack bytes, for the store script to append."""
    return cast(bytes, msgpack.packb(float(seconds)))


def decode_stored(fields: dict[Any, Any]) -> Any:
    """The payload of a stream entry written by the STORE script (field ``p``)."""
    raw = fields.get(b"p", fields.get("p"))
    if not isinstance(raw, bytes):
        raise MalformedMessageError("stream entry has no payload field")
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MalformedMessageError(f"stream entry payload is not msgpack: {exc}") from exc


# Where a client joining a channel with history starts: the newest stored id. On a channel
# with nothing stored, an empty stream is created whose floor (max-deleted-entry-id) is the
# position handed out, so that what is stored later is vouched for from there, while a
# position handed out before Redis lost the stream is not (see history.read_history).
# KEYS: the channel's stream
# ARGV: TTL in ms for a stream created here
RESUME_POINT = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then return newest[1][1] end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
end
local id = redis.call('XADD', KEYS[1], '*', 'p', '')
redis.call('XDEL', KEYS[1], id)
redis.call('XSETID', KEYS[1], id, 'ENTRIESADDED', 0, 'MAXDELETEDID', id)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
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

# Makes a channel's entries owned by one worker match its live connections: removes entries
# of any of its instances that are not live, adds live ones that are missing (the changes
# announced as one BATCH envelope), and gives every live one to the current instance.
# KEYS: members set, seq counter, owners hash, metadata hash
# ARGV: publish command, topic, channel, current instance, the worker's instance prefix,
#       idle TTL in ms, then each live connection id followed by its metadata ("" for none)
RECONCILE = """
local prefix = ARGV[5]
local live = {}
for i = 7, #ARGV, 2 do live[ARGV[i]] = true end
local changes = {}
local function announce(kind, conn, meta)
  local payload = true
  if meta and meta ~= '' then payload = {true, meta} end
  changes[#changes + 1] = {kind, conn, redis.call('INCR', KEYS[2]), payload}
end
local owners = redis.call('HGETALL', KEYS[3])
for i = 1, #owners, 2 do
  local conn, owner = owners[i], owners[i + 1]
  if not live[conn] and string.sub(owner, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[3], conn)
    local meta = redis.call('HGET', KEYS[4], conn)
    redis.call('HDEL', KEYS[4], conn)
    if redis.call('SREM', KEYS[1], conn) == 1 then announce('l', conn, meta) end
  end
end
for i = 7, #ARGV, 2 do
  local conn, meta = ARGV[i], ARGV[i + 1]
  redis.call('HSET', KEYS[3], conn, ARGV[4])
  if meta ~= '' then redis.call('HSET', KEYS[4], conn, meta) end
  if redis.call('SADD', KEYS[1], conn) == 1 then
    redis.call('PERSIST', KEYS[2])
    announce('j', conn, meta)
  end
end
if #changes > 0 then
  if redis.call('SCARD', KEYS[1]) == 0 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
  local last = changes[#changes][3]
  redis.call(ARGV[1], ARGV[2], cmsgpack.pack({1, 'b', ARGV[3], ARGV[4], '', last, changes, 0}))
end
return #changes
"""

# -- the directory: which worker holds which connection, and whose it is -------------------

# Hands an envelope to a worker's inbox if it holds any of the connections it is for.
# KEYS: the worker's connections hash
# ARGV: publish command, the worker's inbox topic, envelope bytes, then the connection ids
# Returns how many of the connections the worker holds, 0 if its inbox has no subscriber.
SEND = """
local held = 0
for i = 4, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then held = held + 1 end
end
if held == 0 then return 0 end
if redis.call(ARGV[1], ARGV[2], ARGV[3]) == 0 then return 0 end
return held
"""

# Makes a worker's connections hash equal its live connections, all owned by its current
# instance. KEYS: the worker's connections hash
# ARGV: current instance, then each live connection id followed by its user id ("" if none)
# Returns the entries it removed, as connection id, value pairs.
RECONCILE_CONNECTIONS = """
local live = {}
for i = 2, #ARGV, 2 do live[ARGV[i]] = true end
local removed = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if not live[entries[i]] then
    redis.call('HDEL', KEYS[1], entries[i])
    removed[#removed + 1] = entries[i]
    removed[#removed + 1] = entries[i + 1]
  end
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ' ' .. ARGV[i + 1])
end
return removed
"""

# Removes the entries a (dead) worker instance owns in its worker's connections hash.
# KEYS: the worker's connections hash; ARGV: the instance
# Returns the entries it removed, as connection id, value pairs.
REAP_CONNECTIONS = """
local prefix = ARGV[1] .. ' '
local removed = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if string.sub(entries[i + 1], 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], entries[i])
    removed[#removed + 1] = entries[i]
    removed[#removed + 1] = entries[i + 1]
  end
end
return removed
"""
