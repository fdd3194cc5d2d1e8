-- Shared message-rate limit: GCRA (generic cell rate algorithm) that grants up to ARGV[3]
-- tokens in one call, so a host can lease a small batch instead of one round trip per message.
-- KEYS[1]  the limit's theoretical-arrival-time key (µs, Redis server clock: hosts' clocks
--          never matter)
-- ARGV[1]  emission interval T in µs (1 s / rate)
-- ARGV[2]  burst tolerance tau in µs ((k - 1) * T for batches of k)
-- ARGV[3]  tokens wanted (>= 1)
-- Returns {granted, retry_after_ms}: granted >= 1 and retry 0, or granted 0 and the wait
-- until the next token.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local room = math.floor((now + tau - tat) / interval) + 1
if room < 1 then
  return {0, math.ceil((tat - tau - now) / 1000)}
end
local granted = math.min(want, room)
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}
