-- batchproc's shared budget: token buckets with debt, on the Redis server's clock.
--
-- One call checks and changes every counter of one request at once (Redis runs a
-- script atomically): requests and tokens, per minute and per day, the bucket's own
-- counters and the key's shared ones, together or not at all.
--
-- KEYS: the hashes the counters live in (KEYS[1]: the model bucket's, which also
--       holds the pause, the back-off scale and the cumulative spend).
-- ARGV[1] op: 'take' admit now (debit all) or say the exact wait (debit nothing);
--             'give' credit back (negative debit: --refund-unused), capped at the size;
--             'hit'  a 429: pause for ARGV[4] s, drain saved credit, slow down;
--             'set'  the server's x-ratelimit-remaining: set the mirrors' levels.
-- ARGV[2] ttl (ms) of every hash written; ARGV[3] number of counters;
-- ARGV[4..6] op data: 'take': the request's tokens; 'give': the tokens given back;
--             'hit': retry-after, cooldown; 'set': seconds since the answered request
--             was admitted, and the requests / tokens spent (cum) right after it.
-- ARGV[7..] per counter, 7 fields: hash index, field, rate (units/s at full speed),
--           burst (s of rate it may save), amount, kind, unit.
--   kind 'r': a rate (starts empty, scaled by the back-off, drained by a 429);
--        'd': a daily budget (starts full, refills over the day, never scaled);
--        'm': a mirror of the server's own counter (starts full, set from headers).
--   unit 'q' requests, 't' tokens.
-- Returns {'ok', cum requests, cum tokens} | {'wait', seconds, index of the binding
-- counter (0: the pause)} | {'done'}. Numbers as strings (a Lua number would be
-- truncated to an integer reply).

local EPOCH = 1700000000  -- keeps microseconds within a double's precision
local MIN_SCALE, DECREASE, RECOVERY = 0.05, 0.9, 0.01

local function fmt(x) return string.format('%.17g', x) end

local t = redis.call('TIME')
local now = (tonumber(t[1]) - EPOCH) + tonumber(t[2]) / 1000000
local op, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local main = KEYS[1]

local st = redis.call('HMGET', main, 'pause', 'scale', 'scaled_at', 'hit_at')
local pause = tonumber(st[1]) or 0
local scale = tonumber(st[2]) or 1
local scaled_at = tonumber(st[3]) or now
local hit_at = tonumber(st[4]) or -1e18
if scale < 1 then scale = math.min(1, scale + math.max(0, now - scaled_at) * RECOVERY) end

-- Every counter brought to now (refilled at its rate, never past its size).
local c = {}
for i = 1, n do
  local b = 7 + (i - 1) * 7
  local k = {key = KEYS[tonumber(ARGV[b])], f = ARGV[b + 1], rate = tonumber(ARGV[b + 2]),
             burst = tonumber(ARGV[b + 3]), amount = tonumber(ARGV[b + 4]),
             kind = ARGV[b + 5], unit = ARGV[b + 6]}
  if k.kind == 'r' then k.rate = k.rate * scale end
  k.size = math.max(k.rate * k.burst, 1)
  local v = redis.call('HMGET', k.key, 'l:' .. k.f, 't:' .. k.f)
  local level, last = tonumber(v[1]), tonumber(v[2])
  if level == nil then
    if k.kind == 'r' then level = 0 else level = k.size end
    last = now
  end
  if now > last then level = level + (now - last) * k.rate end
  k.level = math.min(k.size, level)
  c[i] = k
end

local function save()
  local keys = {}
  for i = 1, n do
    local k = c[i]
    redis.call('HSET', k.key, 'l:' .. k.f, fmt(k.level), 't:' .. k.f, fmt(now))
    keys[k.key] = true
  end
  keys[main] = true
  for key in pairs(keys) do redis.call('PEXPIRE', key, ttl) end
end

if op == 'take' then
  local wait, binding = pause - now, 0
  for i = 1, n do
    local k = c[i]
    -- A request larger than the counter waits for a full counter, then runs into debt.
    local need = math.min(k.amount, k.size)
    if k.level < need - 1e-9 then
      local w = (need - k.level) / k.rate
      if w > wait then wait, binding = w, i end
    end
  end
  if wait > 0 then
    save()  -- a counter seen for the first time starts its clock now
    return {'wait', fmt(wait), tostring(binding)}
  end
  for i = 1, n do
    local k = c[i]
    k.level = k.level - k.amount
  end
  save()
  local cq = redis.call('HINCRBYFLOAT', main, 'cum:q', '1')
  local ct = redis.call('HINCRBYFLOAT', main, 'cum:t', ARGV[4])
  return {'ok', cq, ct}
elseif op == 'give' then
  for i = 1, n do
    local k = c[i]
    k.level = math.min(k.size, k.level + k.amount)
  end
  save()
  redis.call('HINCRBYFLOAT', main, 'cum:t', fmt(-tonumber(ARGV[4])))
  return {'done'}
elseif op == 'hit' then
  local retry_after, cooldown = tonumber(ARGV[4]), tonumber(ARGV[5])
  pause = math.max(pause, now + retry_after)
  for i = 1, n do
    local k = c[i]
    if k.kind == 'r' then k.level = math.min(k.level, 0) end
  end
  save()
  local fields = {'pause', fmt(pause)}
  if now - hit_at >= cooldown then
    scale = math.max(MIN_SCALE, scale * DECREASE)
    fields = {'pause', fmt(pause), 'scale', fmt(scale), 'scaled_at', fmt(now),
              'hit_at', fmt(now)}
  end
  redis.call('HSET', main, unpack(fields))
  return {'done'}
elseif op == 'set' then
  -- The server's counter now: what it said was left right after the answered request,
  -- plus its refill since, less what every worker has spent since (the amount field
  -- carries 'remaining' plus anything the server gave back).
  local age = tonumber(ARGV[4])
  local cum = redis.call('HMGET', main, 'cum:q', 'cum:t')
  local since = {q = (tonumber(cum[1]) or 0) - tonumber(ARGV[5]),
                 t = (tonumber(cum[2]) or 0) - tonumber(ARGV[6])}
  for i = 1, n do
    local k = c[i]
    if k.kind == 'm' then
      k.level = math.min(k.size, k.amount + math.max(0, age) * k.rate - math.max(0, since[k.unit]))
    end
  end
  save()
  return {'done'}
end
return redis.error_reply('batchproc bucket: unknown op ' .. tostring(op))
