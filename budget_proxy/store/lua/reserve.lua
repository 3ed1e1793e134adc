-- reserve.lua: hold one request's worst case on a group of counters, on all of them or none.
-- KEYS[1]    reservation hash: c = cost (nano-USD), t = tokens, q = calls counted,
--            k = JSON list of counter keys,
--            d = deadline (ms since epoch, Redis TIME), i = intent (request holds only: the
--            JSON of the `unsettled` usage record that charges the hold if its process dies)
-- KEYS[2]    deadlines sorted set: reservation id -> deadline (ms)
-- KEYS[3..]  counter hashes: sn / rn = spent / reserved nano-USD, st / rt = spent / reserved
--            tokens, q = calls (counted by the hold, kept by its settlement, taken back by
--            its release)
-- ARGV[1]    reservation id
-- ARGV[2]    cost to hold, integer nano-USD
-- ARGV[3]    tokens to hold, integer
-- ARGV[4]    reservation time to live, ms (the reaper releases it after that)
-- ARGV[5]    idle TTL of counters that have no window end, ms
-- ARGV[6]    intent JSON ('' for a hold without one: released, not charged, at its deadline)
-- ARGV[7]    calls this hold counts (1 for a request, 0 for an allocation's hold)
-- ARGV[8]    JSON array, five numbers per counter in KEYS order: limit nano-USD (-1: none),
--            limit tokens (-1: none), limit calls (-1: none), enforce (1 | 0), counter expiry
--            (ms since epoch; 0: idle TTL). One argument rather than five per counter: each
--            argument costs the client more than decoding costs here.
-- Returns    {ok (1 | 0), refused counter (0-based, -1 when ok), then sn, rn, st, rt, q of
--            each counter, including this hold when ok}
-- The rule is enforcement.would_refuse: spent + reserved + this request <= limit on every
-- enforced counter, and calls + this one <= its call limit. Limits come from ARGV, never from key names. Idempotent by reservation
-- id: a retried call finds its hold and changes nothing. On a cluster every key shares one
-- hash tag; on a standalone server the caller may pass counters of several groups.
local n = #KEYS - 2
local cost = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local calls = tonumber(ARGV[7])
local per_line = cjson.decode(ARGV[8])
local totals, expiries = {}, {}
for i = 1, n do
  -- x: the expiry this script last set on the counter (absent on a counter it never set)
  local v = redis.call('HMGET', KEYS[2 + i], 'sn', 'rn', 'st', 'rt', 'q', 'x')
  totals[i] = {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0,
               tonumber(v[5]) or 0}
  expiries[i] = v[6]
end

local function reply(ok, refused)
  local out = {ok, refused}
  for i = 1, n do
    for j = 1, 5 do out[#out + 1] = totals[i][j] end
  end
  return out
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  return reply(1, -1)
end

for i = 1, n do
  local base = 5 * (i - 1)
  if per_line[base + 4] == 1 then
    local limit_nusd = per_line[base + 1]
    local limit_tokens = per_line[base + 2]
    local limit_calls = per_line[base + 3]
    local t = totals[i]
    if (limit_nusd >= 0 and t[1] + t[2] + cost > limit_nusd)
      or (limit_tokens >= 0 and t[3] + t[4] + tokens > limit_tokens)
      or (limit_calls >= 0 and t[5] + calls > limit_calls) then
      return reply(0, i - 1)
    end
  end
end

local now = redis.call('TIME')
local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[4])
local held = {}
for i = 1, n do
  local key = KEYS[2 + i]
  redis.call('HINCRBY', key, 'rn', ARGV[2])
  redis.call('HINCRBY', key, 'rt', ARGV[3])
  if calls > 0 then redis.call('HINCRBY', key, 'q', ARGV[7]) end
  -- a window's end is set once per counter (x remembers it); an idle TTL moves every time
  local expire_at = string.format('%d', per_line[5 * i])
  if expire_at == '0' then
    redis.call('PEXPIRE', key, ARGV[5])
  elseif expiries[i] ~= expire_at then
    redis.call('PEXPIREAT', key, expire_at)
    redis.call('HSET', key, 'x', expire_at)
  end
  totals[i][2] = totals[i][2] + cost
  totals[i][4] = totals[i][4] + tokens
  totals[i][5] = totals[i][5] + calls
  held[i] = key
end
redis.call('HSET', KEYS[1], 'c', ARGV[2], 't', ARGV[3], 'q', ARGV[7], 'k', cjson.encode(held),
  'd', string.format('%d', deadline))
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'i', ARGV[6])
end
redis.call('ZADD', KEYS[2], deadline, ARGV[1])
return reply(1, -1)
