"""Lua scripts that make each state change of :class:`~idtoken.store.redis.RedisStore` atomic.

Every key a script touches carries the token's hash tag ``{t:<tokenId>}``, so a script never
crosses a Redis Cluster slot. Times come from the caller (the operator's clock) as decimal
seconds; the terminal browser message is built by the caller and stored verbatim.

Events: the scripts publish to the channel the caller passes. On a standalone server or under
Sentinel that is the one ``idtoken:events`` channel (``PUBLISH``); on a Redis Cluster the
scripts are used in their :func:`sharded` form, which publishes with ``SPUBLISH`` to the
token's own channel ``idtoken:{t:<tokenId>}:events`` — in the same slot as the keys, so the
shard that runs the script also delivers the message, and only to the instances listening to
that token.

Two keys live outside the token's slot, and the scripts write them only where there are no
slots (standalone, Sentinel): the socket reference ``idtoken:sessref:{<sid>}``, which CREATE
writes when given a fifth key, and the enrollment token's claim
``idtoken:lock:{enroll-jti:<id>}``, which ENROLL checks and sets as its replay marker. On a
Cluster the caller handles both (see :meth:`~idtoken.store.redis.RedisStore.create_session`
and :meth:`~idtoken.store.redis.RedisStore.enroll`).
"""

from __future__ import annotations


def sharded(script: str) -> str:
    """The Redis Cluster form of a script: sharded publish (``SPUBLISH``) instead of
    ``PUBLISH``. Every script passes the channel it publishes to, and in cluster mode the
    caller passes a channel with the token's hash tag."""
    return script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")


# Shared helpers, prepended to every script that moves a session.
_PRELUDE = r"""
local EXPIRED = '{"type":"expired"}'
-- The nonce of the call taking the decision, if it gives one (see SessionRecord.decided_by).
local BY = ''

local function finish(skey, pkey, sid, state, final, now, keep, channel)
  redis.call('HSET', skey, 'state', state, 'result', final, 'decided', tostring(now), 'by', BY)
  local exp = tonumber(redis.call('HGET', skey, 'exp'))
  redis.call('EXPIRE', skey, math.ceil(math.max(exp, now) + keep - now))
  redis.call('ZREM', pkey, sid)
  -- An empty channel: the caller publishes itself, once the write has reached a replica.
  if channel ~= '' then
    redis.call('PUBLISH', channel, cjson.encode({sid = sid, final = final}))
  end
end

-- nil when the session is pending and unexpired, else the reply to return.
local function check_pending(skey, pkey, sid, now, keep, channel)
  local s = redis.call('HMGET', skey, 'state', 'exp', 'fails')
  if not s[1] then return {'unknown', '0'} end
  if s[1] ~= 'pending' then return {s[1], s[3] or '0'} end
  if now >= tonumber(s[2]) then
    finish(skey, pkey, sid, 'expired', EXPIRED, now, keep, channel)
    return {'expired_now', s[3] or '0'}
  end
  return nil
end

-- Ends the token's other pending sessions; returns {sid, service, sid, service, ...} of them.
local function reject_pending(pkey, prefix, now, final, keep, channel)
  local sids = redis.call('ZRANGEBYSCORE', pkey, '(' .. tostring(now), '+inf')
  local ended = {}
  for _, osid in ipairs(sids) do
    local okey = prefix .. osid
    local o = redis.call('HMGET', okey, 'state', 'decoy', 'svc')
    if o[1] == 'pending' and o[2] ~= '1' then
      finish(okey, pkey, osid, 'rejected', final, now, keep, channel)
      ended[#ended + 1] = osid
      ended[#ended + 1] = o[3] or ''
    end
  end
  return ended
end
"""

# KEYS: device, pending, pushes, session[, session-ref (omitted on a Cluster: another slot)]
# ARGV: now, expiresAt, keep_ms, max_pending, push_limit, push_window, max_failed, sid,
#       decoy allowed ('1' or '0'), fields...
CREATE = r"""
local now = tonumber(ARGV[1])
-- A session id is written once: never over a cancelled creation's tombstone.
if redis.call('EXISTS', KEYS[4]) == 1 then return {'exists', '0'} end
local d = redis.call('HMGET', KEYS[1], 'status', 'pause', 'fails', 'push', 'dead')
local decoy = false
if not d[1] then
  if ARGV[9] ~= '1' then return {'unknown_token', '0'} end
  decoy = true
elseif d[1] == 'revoked' then return {'revoked', '0'}
else
  local pause = tonumber(d[2] or '0') or 0
  if pause > now then
    if ARGV[9] ~= '1' then return {'paused', tostring(pause - now)} end
    decoy = true
  elseif (tonumber(d[3] or '0') or 0) >= tonumber(ARGV[7]) then
    if ARGV[9] ~= '1' then return {'locked', '3600'} end
    decoy = true
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {'too_many_pending', tostring(tonumber(first[2]) - now)}
end
local window = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tostring(now - window))
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {'push_rate', tostring(tonumber(first[2]) + window - now)}
end
local sid = ARGV[8]
redis.call('HSET', KEYS[4], unpack(ARGV, 10))
if decoy then redis.call('HSET', KEYS[4], 'decoy', '1') end
redis.call('PEXPIRE', KEYS[4], ARGV[3])
if KEYS[5] then redis.call('SET', KEYS[5], redis.call('HGET', KEYS[4], 'tok'), 'PX', ARGV[3]) end
redis.call('ZADD', KEYS[2], ARGV[2], sid)
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
redis.call('ZADD', KEYS[3], ARGV[1], sid)
redis.call('EXPIRE', KEYS[3], window)
local push = ''
if not decoy and d[5] ~= '1' then push = d[4] or '' end
return {'created', '0', push}
"""

# KEYS: session, pending, pushes[, session-ref (omitted on a Cluster)]    ARGV: keep, sid
CANCEL = r"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  -- The creation has not run yet (its command may still be queued): a tombstone, without the
  -- session's fields, makes it write nothing when it does.
  redis.call('HSET', KEYS[1], 'state', 'expired')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return 1
end
if state ~= 'pending' then
  -- A tombstone (no 'sid') is still a session never written: nothing can use it.
  if redis.call('HEXISTS', KEYS[1], 'sid') == 0 then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'expired', 'result', '{"type":"expired"}')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if KEYS[4] then redis.call('DEL', KEYS[4]) end
return 1
"""

# KEYS: session, device, pending, pushes
# ARGV: now, keep, sid, channel, key_thumbprint, credential_jti, final, decided_by,
#       grant fields...
APPROVE = (
    _PRELUDE
    + r"""
local now, keep, sid, channel = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
BY = ARGV[8]
local r = check_pending(KEYS[1], KEYS[3], sid, now, keep, channel)
if r then return r end
local s = redis.call('HMGET', KEYS[1], 'fails', 'decoy')
local fails = s[1] or '0'
local d = redis.call('HMGET', KEYS[2], 'status', 'kt', 'cj')
if not d[1] or d[1] == 'revoked' then return {'revoked', fails} end
if s[2] == '1' or d[2] ~= ARGV[5] or d[3] ~= ARGV[6] then return {'stale_device', fails} end
if #ARGV > 8 then redis.call('HSET', KEYS[1], unpack(ARGV, 9)) end
finish(KEYS[1], KEYS[3], sid, 'approved', ARGV[7], now, keep, channel)
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[2], 'fails', '0')
return {'approved_now', fails}
"""
)

# KEYS: session, device, pending
# ARGV: now, keep, sid, channel, end_final ('' = keep pending), too_many_final, max_failures,
#       decided_by
FAIL = (
    _PRELUDE
    + r"""
local now, keep, sid, channel = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
BY = ARGV[8]
local r = check_pending(KEYS[1], KEYS[3], sid, now, keep, channel)
if r then return r end
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'fails', 1) end
local final = ARGV[5]
if fails >= tonumber(ARGV[7]) then final = ARGV[6] end
if final == '' then return {'counted', tostring(fails)} end
finish(KEYS[1], KEYS[3], sid, 'rejected', final, now, keep, channel)
return {'rejected_now', tostring(fails)}
"""
)

# KEYS: session, device, pending
# ARGV: now, keep, sid, channel, final, pause, session-key prefix, decided_by
REJECT = (
    _PRELUDE
    + r"""
local now, keep, sid, channel = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
BY = ARGV[8]
local r = check_pending(KEYS[1], KEYS[3], sid, now, keep, channel)
if r then return r end
local fails = redis.call('HGET', KEYS[1], 'fails') or '0'
finish(KEYS[1], KEYS[3], sid, 'rejected', ARGV[5], now, keep, channel)
local pause = tonumber(ARGV[6])
local ended = {}
if pause > 0 then
  ended = reject_pending(KEYS[3], ARGV[7], now, ARGV[5], keep, channel)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HSET', KEYS[2], 'pause', tostring(now + pause))
  end
end
return {'rejected_now', fails, unpack(ended)}
"""
)

# KEYS: session, pending     ARGV: now, keep, sid, channel, decided_by
EXPIRE = (
    _PRELUDE
    + r"""
BY = ARGV[5]
check_pending(KEYS[1], KEYS[2], ARGV[3], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[4])
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: session, pending
# ARGV: now, keep, sid, channel, grant_hash, poll_interval (0: an authorization code),
#       max_interval
REDEEM = (
    _PRELUDE
    + r"""
local now, keep, sid, channel = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local s = redis.call('HMGET', KEYS[1], 'state', 'exp', 'gh', 'gexp', 'used', 'pollat', 'ival',
  'atj')
if not s[1] or not s[3] or s[3] ~= ARGV[5] then return {'invalid', '0'} end
if s[5] then return {'used', '0', s[8] or ''} end
local ival = '0'
if tonumber(ARGV[6]) > 0 then
  local interval = tonumber(s[7] or ARGV[6])
  local last = tonumber(s[6] or '0')
  if last > 0 and now < last + interval then
    interval = math.min(interval + 5, tonumber(ARGV[7]))
    redis.call('HSET', KEYS[1], 'pollat', ARGV[1], 'ival', tostring(interval))
    return {'slow_down', tostring(interval)}
  end
  ival = tostring(interval)
  redis.call('HSET', KEYS[1], 'pollat', ARGV[1], 'ival', ival)
  local state = s[1]
  if state == 'pending' then
    if now < tonumber(s[2]) then return {'pending', ival} end
    finish(KEYS[1], KEYS[2], sid, 'expired', EXPIRED, now, keep, channel)
    return {'expired_now', ival}
  end
  if state == 'rejected' then return {'denied', ival} end
  if state == 'expired' then return {'expired', ival} end
elseif s[1] ~= 'approved' or now > tonumber(s[4] or '0') then
  return {'invalid', '0'}
end
local g = redis.call('HMGET', KEYS[1], 'grant', 'front')
-- Handed out once: the grant does not stay at rest after it is collected.
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HDEL', KEYS[1], 'grant')
return {'issued', ival, g[1] or '', g[2] or ''}
"""
)

# KEYS: device, replay marker (the global claim; on a Cluster the token's own marker), pending
# ARGV: now, keep, channel, session-key prefix, replay_ttl, issuer, final, fields...
ENROLL = (
    _PRELUDE
    + r"""
if redis.call('EXISTS', KEYS[2]) == 1 then return 'replayed' end
local old = redis.call('HMGET', KEYS[1], 'status', 'iss')
local status = 'enrolled'
if old[1] then
  if old[1] == 'revoked' then return 'revoked' end
  if old[2] ~= ARGV[6] then return 'conflict' end
  status = 'replaced'
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[5])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
if status == 'replaced' then
  reject_pending(KEYS[3], ARGV[4], tonumber(ARGV[1]), ARGV[7], tonumber(ARGV[2]), ARGV[3])
end
return status
"""
)

# KEYS: pending    ARGV: now, session-key prefix
PENDING = r"""
local sids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local out = {}
for _, sid in ipairs(sids) do
  local h = redis.call('HGETALL', ARGV[2] .. sid)
  if #h > 0 then out[#out + 1] = h end
end
return out
"""

# KEYS: session    ARGV: sid, channel
CLAIM = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seq = redis.call('HINCRBY', KEYS[1], 'sock', 1)
redis.call('PUBLISH', ARGV[2], cjson.encode({sid = ARGV[1], claim = seq}))
return seq
"""

# KEYS: window zset    ARGV: now, window, limit, member
HIT = r"""
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tostring(now - window))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(first[2]) + window - now)
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(window))
return '0'
"""

# KEYS: device    ARGV: endpoint
MARK_DEAD = r"""
local push = redis.call('HGET', KEYS[1], 'push')
if not push or push == '' then return 0 end
if cjson.decode(push)['endpoint'] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'dead', '1')
return 1
"""

# KEYS: device    ARGV: subscription JSON ('' = none)
SET_PUSH = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'push', ARGV[1], 'dead', '0')
return 1
"""

# KEYS: device, pending    ARGV: now, keep, channel, session-key prefix, final
REVOKE = (
    _PRELUDE
    + r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'revoked')
reject_pending(KEYS[2], ARGV[4], tonumber(ARGV[1]), ARGV[5], tonumber(ARGV[2]), ARGV[3])
return 1
"""
)

# KEYS: the ping outbox    ARGV: member, now, until
CLAIM_PING = r"""
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: the secret's fingerprint    ARGV: fingerprint, replace ('1' or '0')
FIRST_FINGERPRINT = r"""
if ARGV[2] == '1' then redis.call('SET', KEYS[1], ARGV[1])
else redis.call('SET', KEYS[1], ARGV[1], 'NX') end
return redis.call('GET', KEYS[1])
"""

# KEYS: device
UNLOCK = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'fails', '0', 'pause', '0')
return 1
"""
