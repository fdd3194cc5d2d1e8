-- Shared connection limit: a sorted set of leases scored by their deadline (ms, Redis server
-- clock). A lease is taken or renewed here and dropped with ZREM when its connection closes;
-- a crashed host's leases pass their deadline and are pruned by the next call.
-- KEYS[1]  the limit's lease set
-- ARGV[1]  holder id (host, core, connection)
-- ARGV[2]  max concurrent leases
-- ARGV[3]  lease time to live in ms
-- Returns 1 (held) or 0 (the limit is reached; for a renewal: the lease was lost).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
