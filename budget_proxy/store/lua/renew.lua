-- renew.lua: push the deadline of live request holds of one counter group one TTL ahead.
-- KEYS[1]    deadlines sorted set of the group: reservation id -> deadline (ms, Redis TIME)
-- ARGV[1]    reservation hash prefix of the group (reservation hash = prefix .. id)
-- ARGV[2]    time to live from now, ms
-- ARGV[3..]  reservation ids
-- Returns    how many holds were renewed.
-- A hold already settled, released or reaped (its hash gone) is never recreated. The
-- reservation hashes share the hash tag of KEYS[1] (same slot on a cluster).
local now = redis.call('TIME')
local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[2])
local renewed = 0
for i = 3, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'd', string.format('%d', deadline))
    redis.call('ZADD', KEYS[1], deadline, ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
