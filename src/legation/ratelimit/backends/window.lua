-- One rate limit decision, atomically, in one round trip.
--
-- KEYS[i]           counter i: a hash of bucket index -> hits (all KEYS share one hash tag)
-- ARGV[3i-2 .. 3i]  bucket_ms, span, addend of counter i (buckets b-span .. b count)
-- then triples      counter index (1-based), limit, mode (1 = may deny, 0 = shadow, 2+d = quota
--                   check of descriptor d: denies only with every quota descriptor over)
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

-- Enforced checks (mode 1) deny alone; quota checks (mode 2 + descriptor) deny only when every
-- quota descriptor has a failing check; shadow checks (mode 0) never deny.
local quota_over, quota_any, skip = {}, false, {}
for c = 3 * n + 1, #ARGV, 3 do
  local i = tonumber(ARGV[c])
  local mode = tonumber(ARGV[c + 2])
  local need = addend[i]
  if need < 1 then need = 1 end
  local fails = used[i] + need > tonumber(ARGV[c + 1])
  if mode == 1 and fails then
    result[2] = 0
    return result
  end
  if mode >= 2 then
    quota_any = true
    quota_over[mode] = (quota_over[mode] or false) or fails
  end
end
if quota_any then
  local all_over = true
  for _, over in pairs(quota_over) do
    if not over then all_over = false end
  end
  if all_over then
    result[2] = 0
    return result
  end
  for c = 3 * n + 1, #ARGV, 3 do
    if quota_over[tonumber(ARGV[c + 2])] then skip[tonumber(ARGV[c])] = true end
  end
end

for i = 1, n do
  if addend[i] > 0 and not skip[i] then
    local g = tonumber(ARGV[3 * i - 2])
    local span = tonumber(ARGV[3 * i - 1])
    redis.call('HINCRBY', KEYS[i], bucket[i], addend[i])
    redis.call('PEXPIREAT', KEYS[i], (bucket[i] + span + 1) * g + 1)
  end
end
return result
