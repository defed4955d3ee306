-- Take back the hits a request counted in one slot group when another group denied it
-- (Redis Cluster, a request spread over several slots; see slots.py).
--
-- KEYS[i]            counter i
-- ARGV[2i-1], ARGV[2i]  the bucket the hits went to, and how many
for i = 1, #KEYS do
  local left = redis.call('HINCRBY', KEYS[i], ARGV[2 * i - 1], -tonumber(ARGV[2 * i]))
  if left <= 0 then
    redis.call('HDEL', KEYS[i], ARGV[2 * i - 1])
  end
end
return 1
