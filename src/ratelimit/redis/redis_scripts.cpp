#include "ratelimit/redis/redis_scripts.h"

namespace staple::ratelimit {

namespace {

// Shared helpers. TTLs are counted by Redis' clock and only let it reclaim idle keys: they run
// one second past the moment the key stops counting, by the limiter's clock.
constexpr const char* kPrelude = R"lua(
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local function fmt(x) return string.format('%.17g', x) end
local function ttl_ms(expires)
  local ms = math.ceil((expires - now) * 1000) + 1000
  if ms < 1000 then ms = 1000 end
  return fmt(ms)
end
)lua";

// Fixed window: hash {s = window start, c = units}; the window ends at s + period.
constexpr const char* kFixedWindow = R"lua(
local function load(k, period)
  local v = redis.call('HMGET', k, 's', 'c')
  local s = {k = k, period = period, start = 0, count = 0, expires = -math.huge, exists = false}
  if v[1] then
    s.exists = true
    s.start = tonumber(v[1])
    s.count = tonumber(v[2]) or 0
    s.expires = s.start + period
  end
  if now >= s.expires then s.count = 0 end
  return s
end
local function used(s) return s.count end
local function reset_at(s)
  if now < s.expires then return s.start + s.period end
  return now
end
local function retry_after(s, limit, need)
  if limit == 0 or need > limit then return s.period end
  local wait = s.start + s.period - now
  if wait < 0 then wait = 0 end
  return wait
end
local function consume(s, units)
  if now >= s.expires then
    s.start = now
    s.expires = now + s.period
  end
  s.count = s.count + units
  s.changed = true
  s.extend = true
  if s.start > now then return s.start end
  return now
end
local function give_back(s, units, at)
  if now >= s.expires or at < s.start then return end
  if units > s.count then units = s.count end
  if units > 0 then
    s.count = s.count - units
    s.changed = true
  end
end
local function save(s)
  if not s.changed then return end
  redis.call('HSET', s.k, 's', fmt(s.start), 'c', fmt(s.count))
  if s.extend then redis.call('PEXPIRE', s.k, ttl_ms(s.expires)) end
end
)lua";

// Moving window: list KEY of "at units" entries, oldest first (equal times merged), and KEY#n
// holding their sum. Hits that left the window are popped as the key is loaded.
constexpr const char* kMovingWindow = R"lua(
local function parse(entry)
  local sp = string.find(entry, ' ', 1, true)
  return tonumber(string.sub(entry, 1, sp - 1)), tonumber(string.sub(entry, sp + 1))
end
local function load(k, period)
  local s = {k = k, nk = k .. '#n', period = period}
  s.count = tonumber(redis.call('GET', s.nk) or '0') or 0
  while s.count > 0 do
    local head = redis.call('LINDEX', k, 0)
    if not head then
      s.count = 0
      s.changed = true
      break
    end
    local at, units = parse(head)
    if at + period > now then break end
    redis.call('LPOP', k)
    s.count = s.count - units
    s.changed = true
  end
  if s.count < 0 then s.count = 0 end
  s.exists = s.count > 0
  return s
end
local function used(s) return s.count end
local function reset_at(s)
  if s.count > 0 then
    local at = parse(redis.call('LINDEX', s.k, 0))
    return at + s.period
  end
  return now
end
local function retry_after(s, limit, need)
  if limit == 0 or need > limit then return s.period end
  local excess = s.count - (limit - need)
  local freed = 0
  local wait = 0
  for _, entry in ipairs(redis.call('LRANGE', s.k, 0, -1)) do
    local at, units = parse(entry)
    freed = freed + units
    if freed >= excess then
      wait = at + s.period - now
      break
    end
  end
  if wait < 0 then wait = 0 end
  return wait
end
local function consume(s, units)
  local at = now
  if s.count > 0 then
    local last_at, last_units = parse(redis.call('LINDEX', s.k, -1))
    if last_at > at then at = last_at end
    if last_at == at then
      redis.call('LSET', s.k, -1, fmt(at) .. ' ' .. fmt(last_units + units))
    else
      redis.call('RPUSH', s.k, fmt(at) .. ' ' .. fmt(units))
    end
  else
    redis.call('RPUSH', s.k, fmt(at) .. ' ' .. fmt(units))
  end
  s.count = s.count + units
  s.expires = at + s.period
  s.changed = true
  s.extend = true
  return at
end
local function give_back(s, units, at)
  if at + s.period <= now then return end
  local removed = false
  for i, entry in ipairs(redis.call('LRANGE', s.k, 0, -1)) do
    if units <= 0 then break end
    local hit_at, hit_units = parse(entry)
    if hit_at >= at then
      local taken = hit_units
      if units < taken then taken = units end
      hit_units = hit_units - taken
      s.count = s.count - taken
      units = units - taken
      s.changed = true
      if hit_units == 0 then
        redis.call('LSET', s.k, i - 1, '-')
        removed = true
      else
        redis.call('LSET', s.k, i - 1, fmt(hit_at) .. ' ' .. fmt(hit_units))
      end
    end
  end
  if removed then redis.call('LREM', s.k, 0, '-') end
end
local function save(s)
  if not s.changed then return end
  if s.count <= 0 then
    redis.call('DEL', s.k, s.nk)
    return
  end
  redis.call('SET', s.nk, fmt(s.count), 'KEEPTTL')
  if s.extend then
    local ttl = ttl_ms(s.expires)
    redis.call('PEXPIRE', s.k, ttl)
    redis.call('PEXPIRE', s.nk, ttl)
  end
end
)lua";

// Sliding window counter: hash {w = window index, c = units in it, p = units in the previous}.
constexpr const char* kSlidingWindowCounter = R"lua(
local function load(k, period)
  local v = redis.call('HMGET', k, 'w', 'c', 'p')
  local s = {k = k, period = period, w = 0, c = 0, p = 0, exists = false}
  if v[1] then
    s.exists = true
    s.w = tonumber(v[1])
    s.c = tonumber(v[2]) or 0
    s.p = tonumber(v[3]) or 0
  end
  local index = math.floor(now / period)
  if index == s.w + 1 then
    s.p = s.c
    s.c = 0
    s.w = index
    s.changed = true
  elseif index > s.w + 1 then
    s.p = 0
    s.c = 0
    s.w = index
    s.changed = true
  end
  return s
end
local function elapsed(s)
  local e = now - s.w * s.period
  if e < 0 then return 0 end
  if s.period < e then return s.period end
  return e
end
local function used(s)
  local weighted = 0
  if s.p ~= 0 then
    weighted = math.floor(s.p * (s.period - elapsed(s)) / s.period)
    if weighted >= s.p then
      weighted = s.p
    elseif weighted <= 0 then
      weighted = 0
    end
  end
  return weighted + s.c
end
local function reset_at(s)
  local left = s.period - elapsed(s)
  local reset = math.huge
  if s.p > 0 then reset = now + math.fmod(left, s.period / s.p) end
  if s.c > 0 and now + left < reset then reset = now + left end
  if reset == math.huge then return now end
  return reset
end
local function retry_after(s, limit, need)
  if limit == 0 or need > limit then return s.period end
  local room = limit - need
  local p = s.period
  local el = elapsed(s)
  local wait
  if s.c <= room then
    if s.p == 0 then return 0 end
    local allowed = (room - s.c) + 1
    wait = p - allowed * p / s.p - el
  else
    local allowed = room + 1
    local extra = p - allowed * p / s.c
    if not (0 < extra) then extra = 0 end
    wait = (p - el) + extra
  end
  wait = wait + 0.001
  if not (0 < wait) then wait = 0 end
  return wait
end
local function consume(s, units)
  s.c = s.c + units
  s.expires = (s.w + 2) * s.period
  s.changed = true
  s.extend = true
  if s.w * s.period > now then return s.w * s.period end
  return now
end
local function give_back(s, units, at)
  local index = math.floor(at / s.period)
  if index == s.w then
    if units > s.c then units = s.c end
    s.c = s.c - units
    s.changed = true
  elseif index == s.w - 1 then
    if units > s.p then units = s.p end
    s.p = s.p - units
    s.changed = true
  end
end
local function save(s)
  if not (s.extend or (s.exists and s.changed)) then return end
  redis.call('HSET', s.k, 'w', fmt(s.w), 'c', fmt(s.c), 'p', fmt(s.p))
  if s.extend then redis.call('PEXPIRE', s.k, ttl_ms(s.expires)) end
end
)lua";

// Loads each distinct key once (checks on the same key share its state) in first-seen order.
constexpr const char* kStates = R"lua(
local n = #KEYS
local states, order = {}, {}
local limits, periods, befores = {}, {}, {}
for i = 1, n do
  local base = 2 + 3 * (i - 1)
  limits[i] = tonumber(ARGV[base + 1])
  periods[i] = tonumber(ARGV[base + 2])
  befores[i] = tonumber(ARGV[base + 3])
end
local function state(i)
  local k = KEYS[i]
  local s = states[k]
  if not s then
    s = load(k, periods[i])
    states[k] = s
    order[#order + 1] = s
  end
  return s
end
local function save_all()
  for _, s in ipairs(order) do save(s) end
end
)lua";

// Phase 1 looks at every check; phase 2 charges all of them only if all have room.
constexpr const char* kAcquireMain = R"lua(
local allowed = true
local deciding, deciding_used, deciding_reset, retry = 0, 0, now, 0
for i = 1, n do
  local s = state(i)
  local limit, before = limits[i], befores[i]
  local u = used(s)
  if not (limit > 0 and before <= limit and cost <= limit - before and u <= limit - before - cost) then
    local r = retry_after(s, limit, before + cost)
    if allowed then
      allowed = false
      deciding = i - 1
      deciding_used = u
      deciding_reset = reset_at(s)
    end
    if r > retry then retry = r end
  end
end
if not allowed then
  save_all()
  return {0, deciding, fmt(retry), deciding_used, fmt(deciding_reset)}
end
local at = now
if cost > 0 then
  for i = 1, n do
    local counted = consume(state(i), cost)
    if counted > at then at = counted end
  end
end
save_all()
local out = {1, 0, '0'}
for i = 1, n do
  local s = state(i)
  out[#out + 1] = used(s)
  out[#out + 1] = fmt(reset_at(s))
end
out[#out + 1] = fmt(at)
return out
)lua";

constexpr const char* kRefundMain = R"lua(
local acquired_at = tonumber(ARGV[#ARGV])
if cost > 0 then
  for i = 1, n do
    local s = state(i)
    if s.exists then give_back(s, cost, acquired_at) end
  end
end
save_all()
return 1
)lua";

constexpr const char* kChargeMain = R"lua(
if cost > 0 then
  for i = 1, n do consume(state(i), cost) end
end
save_all()
return 1
)lua";

const char* StrategySource(Strategy strategy) {
  switch (strategy) {
    case Strategy::kFixedWindow:
      return kFixedWindow;
    case Strategy::kMovingWindow:
      return kMovingWindow;
    case Strategy::kSlidingWindowCounter:
      return kSlidingWindowCounter;
  }
  return kFixedWindow;
}

}  // namespace

std::string AcquireScript(Strategy strategy) {
  return std::string(kPrelude) + StrategySource(strategy) + kStates + kAcquireMain;
}

std::string RefundScript(Strategy strategy) {
  return std::string(kPrelude) + StrategySource(strategy) + kStates + kRefundMain;
}

std::string ChargeScript(Strategy strategy) {
  return std::string(kPrelude) + StrategySource(strategy) + kStates + kChargeMain;
}

}  // namespace staple::ratelimit
