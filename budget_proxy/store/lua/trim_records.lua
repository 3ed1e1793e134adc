-- trim_records.lua: drop the usage records of one shard older than the retention.
-- KEYS[1]    usage records hash of the shard (record id -> record JSON)
-- KEYS[2]    the shard's index of every record (sorted set record id -> timestamp, s)
-- ARGV[1]    cutoff: records with a timestamp (s) below this go
-- ARGV[2]    most records to drop in this call
-- ARGV[3]    prefix of the shard's field indexes (index key = prefix .. field .. ':' .. value)
-- ARGV[4..]  the indexed fields
-- Returns    how many records were dropped. Every key shares the shard's hash tag.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0,
                       tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[1], id)
  if body then
    local ok, doc = pcall(cjson.decode, body)
    if ok and type(doc) == 'table' then
      for i = 4, #ARGV do
        local value = doc[ARGV[i]]
        if type(value) == 'string' then
          redis.call('ZREM', ARGV[3] .. ARGV[i] .. ':' .. value, id)
        end
      end
    end
    redis.call('HDEL', KEYS[1], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
return #ids
