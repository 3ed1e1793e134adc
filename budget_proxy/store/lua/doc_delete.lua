-- doc_delete.lua: delete one JSON document.
-- KEYS[1]  documents hash of the kind: doc id -> JSON body
-- KEYS[2]  order sorted set of the kind: doc id -> creation sequence
-- KEYS[3]  config version (integer)
-- ARGV[1]  doc id
-- ARGV[2]  1: a config document, so the config version moves when one was deleted
-- Returns  {deleted (1 | 0), config version}
local deleted = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local version
if deleted == 1 and ARGV[2] == '1' then
  version = redis.call('INCR', KEYS[3])
else
  version = tonumber(redis.call('GET', KEYS[3]) or '0')
end
return {deleted, version}
