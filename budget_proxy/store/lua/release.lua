-- release.lua: drop one request's hold on a group of counters without spend.
-- KEYS[1]    reservation hash (fields c, t, q, k, d: see reserve.lua)
-- KEYS[2]    deadlines sorted set: reservation id -> deadline (ms)
-- KEYS[3..]  counter hashes (rn / rt = reserved nano-USD / tokens, q = calls)
-- ARGV[1]    reservation id
-- Returns    1 if a hold was released, 0 if there was none (settled, released or reaped
--            already): releasing twice never gives back more than was held.
-- Amounts come from the reservation hash, not from the caller.
local function release_one(key, cost, tokens, calls)
  -- amounts stay decimal strings (a Lua number past 1e14 prints as '1e+14', which HINCRBY
  -- refuses); only non-zero amounts move ('-0' is not an integer to HINCRBY); never below 0
  if tonumber(cost) > 0 and redis.call('HINCRBY', key, 'rn', '-' .. cost) < 0 then redis.call('HSET', key, 'rn', 0) end
  if tonumber(tokens) > 0 and redis.call('HINCRBY', key, 'rt', '-' .. tokens) < 0 then redis.call('HSET', key, 'rt', 0) end
  -- the calls the hold counted (q, absent on holds from before call limits) are taken back
  if tonumber(calls or '0') > 0 and redis.call('HINCRBY', key, 'q', '-' .. calls) < 0 then redis.call('HSET', key, 'q', 0) end
end

local held = redis.call('HMGET', KEYS[1], 'c', 't', 'q')
redis.call('ZREM', KEYS[2], ARGV[1])
if not held[1] then
  return 0
end
local cost, tokens = held[1], held[2]
for i = 3, #KEYS do
  release_one(KEYS[i], cost, tokens, held[3])
end
redis.call('DEL', KEYS[1])
return 1
