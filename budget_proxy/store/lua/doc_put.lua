-- doc_put.lua: create or replace one JSON document, keeping creation order.
-- KEYS[1]  documents hash of the kind: doc id -> JSON body
-- KEYS[2]  order sorted set of the kind: doc id -> creation sequence
-- KEYS[3]  creation sequence counter (integer)
-- KEYS[4]  config version (integer)
-- ARGV[1]  doc id
-- ARGV[2]  JSON body
-- ARGV[3]  1: create only if absent (add_doc), 0: create or replace (put_doc)
-- ARGV[4]  1: a config document, so the config version moves
-- Returns  {written (1 | 0), config version}
if ARGV[3] == '1' then
  if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
    return {0, tonumber(redis.call('GET', KEYS[4]) or '0')}
  end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
end
local version
if ARGV[4] == '1' then
  version = redis.call('INCR', KEYS[4])
else
  version = tonumber(redis.call('GET', KEYS[4]) or '0')
end
return {1, version}
