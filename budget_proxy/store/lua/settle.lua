-- settle.lua: turn a hold into spend at the actual amounts and store the usage record,
-- exactly once.
-- KEYS[1]        dedupe key (string, SET NX with a TTL), used when the dedupe TTL > 0
-- KEYS[2..1+n]   counter hashes (sn / st += actual; rn / rt -= the held amounts)
-- then, with the reservation keys: the reservation hash and the deadlines sorted set of the
--                group
-- then, with a record (ARGV[5] ~= ''): where 'h' (no database), the usage records hash,
--                then the index sorted sets of the record; where 's' (a database), the
--                record's settle marker (string), then its hand-off stream (XADD r=<record>)
-- ARGV[1]        settle id (record id, or reservation id when there is no record)
-- ARGV[2]        reservation id
-- ARGV[3]        actual cost, integer nano-USD
-- ARGV[4]        actual tokens, integer
-- ARGV[5]        usage record JSON ('' when none)
-- ARGV[6]        token of this settlement (a digest of its record), the dedupe key's value
-- ARGV[7]        JSON array of the rest (one argument: each costs the client more than
--                decoding costs here):
--                [1] n, the number of counters
--                [2] 1 if the reservation keys follow the counters, else 0
--                [3] dedupe key TTL, ms (0: no dedupe key; the record deduplicates)
--                [4] idle TTL for a counter this creates, ms
--                [5] usage record timestamp (seconds since epoch, the index score)
--                [6] where the record goes: 'h' (kept in Redis) or 's' (handed off to the
--                    ledger)
--                [7] with 's': how long the settle marker lives, ms
-- Returns        1 if applied now, 2 if this same settlement (same token) had been applied
--                before (a replay), 0 if another settlement of the id had been (on a cluster
--                the caller writes the record only after a 1 or a 2: the dead-hold charge
--                that lost the race to the real settlement never writes its record).
-- Settles even when the hold is gone (reaped, or never made in fail-open mode): the call
-- did happen, so its cost is spent. All keys share one hash tag on a cluster (the record
-- goes in its own call there); on a standalone server one call carries everything.
local options = cjson.decode(ARGV[7])
local n = options[1]
local dedupe_ms = string.format('%d', options[3])
local idle_ms = string.format('%d', options[4])
local pos = 2 + n
local res_key, deadlines_key
if options[2] == 1 then
  res_key, deadlines_key = KEYS[pos], KEYS[pos + 1]
  pos = pos + 2
end
local record = ARGV[5]
local handoff = options[6] == 's'
if record ~= '' then
  if handoff then
    if redis.call('EXISTS', KEYS[pos]) == 1 then return 0 end
  elseif redis.call('HEXISTS', KEYS[pos], ARGV[1]) == 1 then
    return 0
  end
end
if dedupe_ms ~= '0' and not redis.call('SET', KEYS[1], ARGV[6], 'NX', 'PX', dedupe_ms) then
  if redis.call('GET', KEYS[1]) == ARGV[6] then return 2 end
  return 0
end

-- held amounts stay decimal strings: a Lua number past 1e14 prints as '1e+14' (not an integer)
local held_cost, held_tokens = '0', '0'
if res_key then
  local held = redis.call('HMGET', res_key, 'c', 't')
  if held[1] then
    held_cost, held_tokens = held[1], held[2]
    redis.call('DEL', res_key)
  end
  redis.call('ZREM', deadlines_key, ARGV[2])
end
for i = 2, 1 + n do
  local key = KEYS[i]
  if tonumber(held_cost) > 0 and redis.call('HINCRBY', key, 'rn', '-' .. held_cost) < 0 then
    redis.call('HSET', key, 'rn', 0)
  end
  if tonumber(held_tokens) > 0 and redis.call('HINCRBY', key, 'rt', '-' .. held_tokens) < 0 then
    redis.call('HSET', key, 'rt', 0)
  end
  redis.call('HINCRBY', key, 'sn', ARGV[3])
  redis.call('HINCRBY', key, 'st', ARGV[4])
  if redis.call('PTTL', key) == -1 then redis.call('PEXPIRE', key, idle_ms) end
end

if record ~= '' and handoff then
  redis.call('SET', KEYS[pos], ARGV[6], 'PX', string.format('%d', options[7]))
  redis.call('XADD', KEYS[pos + 1], '*', 'r', record)
elseif record ~= '' then
  redis.call('HSET', KEYS[pos], ARGV[1], record)
  for i = pos + 1, #KEYS do
    redis.call('ZADD', KEYS[i], options[5], ARGV[1])
  end
end
return 1
