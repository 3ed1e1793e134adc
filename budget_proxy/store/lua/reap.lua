-- reap.lua: the holds of one counter group whose deadline has passed.
-- KEYS[1]    deadlines sorted set of the group: reservation id -> deadline (ms, Redis TIME)
-- ARGV[1]    reservation hash prefix of the group (reservation hash = prefix .. id)
-- ARGV[2]    most holds to look at in this call
-- ARGV[3]    lease, ms: a request hold handed out for charging gets this much more time, so
--            replicas reaping at once rarely charge it twice (the charge is idempotent anyway)
-- Returns    {released, then five per request hold to charge: id, c, t, k, i}
-- Live holds are renewed by their process, so an expired hold belongs to a dead one.
-- - A hold without an intent (an allocation's) is released here: whoever deletes its hash
--   first (this atomic script, release.lua or settle.lua) releases it, never twice.
-- - A request hold (field i, its intent) is charged, not released: the caller applies it as
--   a settlement at the held amounts with the intent as its `unsettled` usage record
--   (settle.lua, exactly once by record id: if the real settlement came first, nothing).
-- The reservation hashes and counters it reads from a hash's `k` field share the hash tag
-- of KEYS[1] (same slot on a cluster).
local function release_one(key, cost, tokens, calls)
  -- amounts stay decimal strings (a Lua number past 1e14 prints as '1e+14', which HINCRBY
  -- refuses); only non-zero amounts move ('-0' is not an integer to HINCRBY); never below 0
  if tonumber(cost) > 0 and redis.call('HINCRBY', key, 'rn', '-' .. cost) < 0 then redis.call('HSET', key, 'rn', 0) end
  if tonumber(tokens) > 0 and redis.call('HINCRBY', key, 'rt', '-' .. tokens) < 0 then redis.call('HSET', key, 'rt', 0) end
  -- the calls the hold counted (q, absent on holds from before call limits) are taken back
  if tonumber(calls or '0') > 0 and redis.call('HINCRBY', key, 'q', '-' .. calls) < 0 then redis.call('HSET', key, 'q', 0) end
end

local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {0}
for _, id in ipairs(expired) do
  local key = ARGV[1] .. id
  local held = redis.call('HMGET', key, 'c', 't', 'k', 'i', 'q')
  if held[1] and held[4] then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), id)
    for _, v in ipairs({id, held[1], held[2], held[3], held[4]}) do out[#out + 1] = v end
  else
    if held[1] then
      local cost, tokens = held[1], held[2]
      for _, counter in ipairs(cjson.decode(held[3])) do
        release_one(counter, cost, tokens, held[5])
      end
      redis.call('DEL', key)
      out[1] = out[1] + 1
    end
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
