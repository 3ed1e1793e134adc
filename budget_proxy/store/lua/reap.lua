-- reap.lua: release the holds of one counter group whose deadline has passed.
-- KEYS[1]    deadlines sorted set of the group: reservation id -> deadline (ms, Redis TIME)
-- ARGV[1]    reservation hash prefix of the group (reservation hash = prefix .. id)
-- ARGV[2]    most holds to release in this call
-- Returns    how many holds were released.
-- Any replica may run it at any time: a hold is released by whoever deletes its hash first
-- (inside this atomic script, or by release.lua / settle.lua), so concurrent reapers never
-- release twice. The reservation hashes and counters it reads from a hash's `k` field share
-- the hash tag of KEYS[1] (same slot on a cluster).
local function release_one(key, cost, tokens)
  -- only non-zero amounts move ('-0' is not an integer to HINCRBY); never below zero
  if cost > 0 and redis.call('HINCRBY', key, 'rn', -cost) < 0 then redis.call('HSET', key, 'rn', 0) end
  if tokens > 0 and redis.call('HINCRBY', key, 'rt', -tokens) < 0 then redis.call('HSET', key, 'rt', 0) end
end

local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local released = 0
for _, id in ipairs(expired) do
  local key = ARGV[1] .. id
  local held = redis.call('HMGET', key, 'c', 't', 'k')
  if held[1] then
    local cost = tonumber(held[1])
    local tokens = tonumber(held[2])
    for _, counter in ipairs(cjson.decode(held[3])) do
      release_one(counter, cost, tokens)
    end
    redis.call('DEL', key)
    released = released + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
return released
