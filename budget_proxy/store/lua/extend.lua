-- extend.lua: grow one live hold on a group of counters (an incremental stream's next slice
-- of output), on all of them or none, by reserve.lua's limit rule.
-- KEYS[1]    reservation hash (fields c, t, q, k, d: see reserve.lua)
-- KEYS[2..]  counter hashes: sn / rn = spent / reserved nano-USD, st / rt = spent / reserved
--            tokens, q = calls
-- ARGV[1]    cost to add, integer nano-USD (negative only to undo an extension of another
--            group on a cluster, with no counter enforced)
-- ARGV[2]    tokens to add, integer (likewise)
-- ARGV[3..]  four per counter, in KEYS order: limit nano-USD (-1: none), limit tokens
--            (-1: none), limit calls (-1: none), enforce (1 | 0)
-- Returns    {ok (1 | 0), refused counter (0-based; -1 when ok, -2 when the hold is gone),
--            then sn, rn, st, rt, q of each counter, including the extension when ok}
-- The rule is enforcement.would_refuse with no call counted: spent + reserved + the
-- extension <= limit on every enforced counter (a call limit refuses only a new call). The
-- hash's own amounts grow too, so settle, release and reap take the extended hold. A hold
-- already settled, released or reaped is never recreated.
local n = #KEYS - 1
local cost = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local totals = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[1 + i], 'sn', 'rn', 'st', 'rt', 'q')
  totals[i] = {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0,
               tonumber(v[5]) or 0}
end

local function reply(ok, refused)
  local out = {ok, refused}
  for i = 1, n do
    for j = 1, 5 do out[#out + 1] = totals[i][j] end
  end
  return out
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return reply(0, -2)
end

for i = 1, n do
  local base = 2 + 4 * (i - 1)
  if ARGV[base + 4] == '1' then
    local limit_nusd = tonumber(ARGV[base + 1])
    local limit_tokens = tonumber(ARGV[base + 2])
    local t = totals[i]
    if (limit_nusd >= 0 and t[1] + t[2] + cost > limit_nusd)
      or (limit_tokens >= 0 and t[3] + t[4] + tokens > limit_tokens) then
      return reply(0, i - 1)
    end
  end
end

for i = 1, n do
  -- amounts stay decimal strings (HINCRBY refuses '1e+14'); only non-zero amounts move
  -- ('-0' is not an integer to HINCRBY)
  if cost ~= 0 then redis.call('HINCRBY', KEYS[1 + i], 'rn', ARGV[1]) end
  if tokens ~= 0 then redis.call('HINCRBY', KEYS[1 + i], 'rt', ARGV[2]) end
  totals[i][2] = totals[i][2] + cost
  totals[i][4] = totals[i][4] + tokens
end
if cost ~= 0 then redis.call('HINCRBY', KEYS[1], 'c', ARGV[1]) end
if tokens ~= 0 then redis.call('HINCRBY', KEYS[1], 't', ARGV[2]) end
return reply(1, -1)
