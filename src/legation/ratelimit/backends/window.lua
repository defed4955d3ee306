-- One rate limit decision, atomically, in one round trip.
--
-- KEYS[i]           counter i: a hash of bucket index -> hits (all KEYS share one hash tag)
-- ARGV[3i-2 .. 3i]  bucket_ms, span, addend of counter i (buckets b-span .. b count)
-- then triples      counter index (1-based), limit, enforce (1 = may deny, 0 = shadow)
--
-- Returns {now_ms, admitted (1/0), used_1, oldest_1, used_2, oldest_2, ...}; oldest is the
-- oldest bucket still counted, -1 if none. Hits are added only when every enforced check
-- passes, so a denied request consumes nothing. Time comes from the server, never the client.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local result = {now, 1}
local used, bucket, addend = {}, {}, {}

for i = 1, n do
  local g = tonumber(ARGV[3 * i - 2])
  local first = math.floor(now / g) - tonumber(ARGV[3 * i - 1])
  bucket[i] = math.floor(now / g)
  addend[i] = tonumber(ARGV[3 * i])
  local fields = redis.call('HGETALL', KEYS[i])
  local sum, oldest = 0, -1
  for f = 1, #fields, 2 do
    local index = tonumber(fields[f])
    if index < first then
      redis.call('HDEL', KEYS[i], fields[f])
    else
      sum = sum + tonumber(fields[f + 1])
      if oldest < 0 or index < oldest then oldest = index end
    end
  end
  used[i] = sum
  result[2 * i + 1] = sum
  result[2 * i + 2] = oldest
end

for c = 3 * n + 1, #ARGV, 3 do
  local i = tonumber(ARGV[c])
  local need = addend[i]
  if need < 1 then need = 1 end
  if tonumber(ARGV[c + 2]) == 1 and used[i] + need > tonumber(ARGV[c + 1]) then
    result[2] = 0
    return result
  end
end

for i = 1, n do
  if addend[i] > 0 then
    local g = tonumber(ARGV[3 * i - 2])
    local span = tonumber(ARGV[3 * i - 1])
    redis.call('HINCRBY', KEYS[i], bucket[i], addend[i])
    redis.call('PEXPIREAT', KEYS[i], (bucket[i] + span + 1) * g + 1)
  end
end
return result
