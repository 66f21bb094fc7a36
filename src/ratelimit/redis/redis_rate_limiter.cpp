#include "ratelimit/redis/redis_rate_limiter.h"

#include <fmt/format.h>

#include <cstdlib>
#include <exception>
#include <limits>
#include <mutex>
#include <utility>

#include "common/await.h"
#include "ratelimit/redis/redis_connection.h"
#include "ratelimit/redis/redis_scripts.h"

namespace staple::ratelimit {

namespace {

constexpr std::uint64_t kMaxU64 = std::numeric_limits<std::uint64_t>::max();
// Lua numbers are doubles: integers are exact up to here.
constexpr std::uint64_t kMaxExact = std::uint64_t{1} << 53;

std::uint64_t SaturateAmount(Amount amount) {
  return amount > kMaxU64 ? kMaxU64 : static_cast<std::uint64_t>(amount);
}

std::string Exact(std::uint64_t value) { return std::to_string(std::min(value, kMaxExact)); }

// Shortest text that parses back to the same double, as Lua's tonumber (strtod) reads it.
std::string DoubleText(double value) { return fmt::format("{}", value); }

Error Unavailable(std::string message) {
  return MakeError(ErrorKind::kUnavailable, std::move(message));
}

Error BadReply(const RedisReply& reply) {
  if (reply.type == RedisReply::Type::kError) {
    return Unavailable("rate limit storage error: " + reply.str);
  }
  return Unavailable("rate limit storage sent an unexpected reply");
}

bool ReadDouble(const RedisReply& reply, double& out) {
  if (reply.type == RedisReply::Type::kInteger) {
    out = static_cast<double>(reply.integer);
    return true;
  }
  if (reply.type != RedisReply::Type::kString) return false;
  char* end = nullptr;
  out = std::strtod(reply.str.c_str(), &end);
  return end != nullptr && end != reply.str.c_str() && *end == '\0';
}

bool ReadCount(const RedisReply& reply, std::uint64_t& out) {
  if (reply.type != RedisReply::Type::kInteger || reply.integer < 0) return false;
  out = static_cast<std::uint64_t>(reply.integer);
  return true;
}

LimitState StateOf(const Check& check, std::uint64_t used, double reset_at) {
  const std::uint64_t limit = SaturateAmount(check.item.amount);
  return LimitState{limit, used < limit ? limit - used : 0, reset_at};
}

// Builds the script arguments shared by Acquire and Refund (see redis_scripts.h).
std::vector<std::string> ScriptArgs(const std::vector<Check>& checks,
                                    const std::vector<std::string>& keys, double now,
                                    std::uint64_t cost) {
  std::vector<std::string> args;
  args.reserve(2 + 3 * checks.size());
  args.push_back(DoubleText(now));
  args.push_back(Exact(cost));
  for (std::size_t i = 0; i < checks.size(); ++i) {
    // A check listed twice is one counter charged twice (MemoryRateLimiter's rule).
    std::uint64_t before = 0;
    for (std::size_t j = 0; j < i; ++j) {
      if (keys[j] == keys[i]) before = before > kMaxU64 - cost ? kMaxU64 : before + cost;
    }
    args.push_back(Exact(SaturateAmount(checks[i].item.amount)));
    args.push_back(std::to_string(checks[i].item.PeriodSeconds()));
    args.push_back(Exact(before));
  }
  return args;
}

const char* StrategyTag(Strategy strategy) {
  switch (strategy) {
    case Strategy::kFixedWindow:
      return "fw:";
    case Strategy::kMovingWindow:
      return "mw:";
    case Strategy::kSlidingWindowCounter:
      return "sw:";
  }
  return "fw:";
}

}  // namespace

Result<RedisOptions> ParseRedisUrl(std::string_view url) {
  auto address = ParseRedisAddress(url);
  if (!address) return address.error();
  RedisOptions options;
  static_cast<RedisAddress&>(options) = std::move(address).value();
  return options;
}

struct RedisRateLimiter::ShaCache {
  std::mutex mutex;
  std::string sha[kScriptCount];  // guarded by mutex
};

RedisRateLimiter::RedisRateLimiter(const Clock& clock, Strategy strategy, RedisOptions options)
    : clock_(clock),
      strategy_(strategy),
      options_(std::move(options)),
      scripts_{AcquireScript(strategy), RefundScript(strategy), ChargeScript(strategy)},
      shas_(std::make_unique<ShaCache>()),
      work_(net::make_work_guard(io_)) {
  RedisConnectionSettings settings;
  settings.host = options_.host;
  settings.port = options_.port;
  settings.db = options_.db;
  settings.username = options_.username;
  settings.password = options_.password;
  settings.timeout = options_.timeout;
  settings.backoff_initial = options_.backoff_initial;
  settings.backoff_max = options_.backoff_max;
  connection_ = std::make_unique<RedisConnection>(io_, std::move(settings));
  thread_ = std::thread([this] { io_.run(); });
}

RedisRateLimiter::~RedisRateLimiter() {
  // The connection is freed on its own thread (waiting commands complete with kUnavailable);
  // the thread ends once the cancelled waits and timers have run.
  net::post(io_, [this] {
    connection_.reset();
    work_.reset();
  });
  thread_.join();
}

net::awaitable<Result<RedisReply>> RedisRateLimiter::Command(std::vector<std::string> argv) {
  net::io_context* io = &io_;
  RedisConnection* connection = connection_.get();
  auto start = [io, connection, argv = std::move(argv)](auto done) mutable {
    net::post(*io, [connection, argv = std::move(argv), done]() mutable {
      connection->Execute(std::move(argv), std::move(done));
    });
  };
  Result<RedisReply> reply = co_await AwaitCallback<Result<RedisReply>>(std::move(start));
  co_return reply;
}

net::awaitable<Result<RedisReply>> RedisRateLimiter::RunScript(ScriptId id,
                                                               std::vector<std::string> keys,
                                                               std::vector<std::string> args) {
  std::string sha;
  {
    std::lock_guard lock(shas_->mutex);
    sha = shas_->sha[id];
  }
  auto argv_for = [&](const std::string& command, const std::string& script_or_sha) {
    std::vector<std::string> argv;
    argv.reserve(3 + keys.size() + args.size());
    argv.push_back(command);
    argv.push_back(script_or_sha);
    argv.push_back(std::to_string(keys.size()));
    argv.insert(argv.end(), keys.begin(), keys.end());
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  if (!sha.empty()) {
    std::vector<std::string> argv = argv_for("EVALSHA", sha);
    Result<RedisReply> reply = co_await Command(std::move(argv));
    const bool noscript = reply.ok() && reply->type == RedisReply::Type::kError &&
                          reply->str.rfind("NOSCRIPT", 0) == 0;
    if (!noscript) co_return reply;
  }
  // Unknown or forgotten by Redis: load it in the background for the next calls, and run this
  // one with EVAL (queued behind the SCRIPT LOAD on the same connection).
  {
    std::vector<std::string> load{"SCRIPT", "LOAD", scripts_[id]};
    ShaCache* shas = shas_.get();
    RedisConnection* connection = connection_.get();
    net::post(io_, [connection, shas, id, load = std::move(load)]() mutable {
      connection->Execute(std::move(load), [shas, id](Result<RedisReply> reply) {
        if (!reply.ok() || reply->type != RedisReply::Type::kString) return;
        std::lock_guard lock(shas->mutex);
        shas->sha[id] = reply->str;
      });
    });
  }
  std::vector<std::string> argv = argv_for("EVAL", scripts_[id]);
  Result<RedisReply> reply = co_await Command(std::move(argv));
  co_return reply;
}

std::string RedisRateLimiter::StorageKey(const Check& check) const {
  std::string key = options_.key_prefix;
  key += StrategyTag(strategy_);
  key += check.key;
  key += '/';
  key += check.item.Key();
  return key;
}

net::awaitable<Result<Decision>> RedisRateLimiter::Acquire(std::vector<Check> checks,
                                                           std::uint64_t cost) {
  const double now = clock_.Now();
  Decision decision;
  decision.at = now;
  if (checks.empty()) co_return decision;
  std::vector<std::string> keys;
  keys.reserve(checks.size());
  for (const Check& check : checks) keys.push_back(StorageKey(check));
  std::vector<std::string> args = ScriptArgs(checks, keys, now, cost);
  Result<RedisReply> reply = co_await RunScript(kAcquireScript, std::move(keys), std::move(args));
  if (!reply.ok()) co_return reply.error();
  const RedisReply& r = *reply;
  if (r.type != RedisReply::Type::kArray || r.elements.size() < 3 ||
      r.elements[0].type != RedisReply::Type::kInteger) {
    co_return BadReply(r);
  }
  decision.allowed = r.elements[0].integer == 1;
  if (!decision.allowed) {
    std::uint64_t used = 0;
    double reset_at = 0;
    if (r.elements.size() != 5 || r.elements[1].type != RedisReply::Type::kInteger ||
        r.elements[1].integer < 0 ||
        static_cast<std::size_t>(r.elements[1].integer) >= checks.size() ||
        !ReadDouble(r.elements[2], decision.retry_after) || !ReadCount(r.elements[3], used) ||
        !ReadDouble(r.elements[4], reset_at)) {
      co_return BadReply(r);
    }
    decision.deciding = static_cast<std::size_t>(r.elements[1].integer);
    decision.state = StateOf(checks[decision.deciding], used, reset_at);
    co_return decision;
  }
  if (r.elements.size() != 4 + 2 * checks.size() ||
      !ReadDouble(r.elements[3 + 2 * checks.size()], decision.at)) {
    co_return BadReply(r);
  }
  // The tightest check decides the headers: least remaining, ties to the earliest reset.
  LimitState best;
  for (std::size_t i = 0; i < checks.size(); ++i) {
    std::uint64_t used = 0;
    double reset_at = 0;
    if (!ReadCount(r.elements[3 + 2 * i], used) || !ReadDouble(r.elements[4 + 2 * i], reset_at)) {
      co_return BadReply(r);
    }
    const LimitState candidate = StateOf(checks[i], used, reset_at);
    if (i == 0 || candidate.remaining < best.remaining ||
        (candidate.remaining == best.remaining && candidate.reset_at < best.reset_at)) {
      decision.deciding = i;
      best = candidate;
    }
  }
  decision.state = best;
  decision.retry_after = 0;
  co_return decision;
}

net::awaitable<Status> RedisRateLimiter::Adjust(ScriptId id, std::vector<Check> checks,
                                                std::uint64_t amount,
                                                std::optional<double> acquired_at) {
  if (checks.empty() || amount == 0) co_return Ok();
  std::vector<std::string> keys;
  keys.reserve(checks.size());
  for (const Check& check : checks) keys.push_back(StorageKey(check));
  std::vector<std::string> args = ScriptArgs(checks, keys, clock_.Now(), amount);
  if (acquired_at) args.push_back(DoubleText(*acquired_at));
  Result<RedisReply> reply = co_await RunScript(id, std::move(keys), std::move(args));
  if (!reply.ok()) co_return reply.error();
  if (reply->type != RedisReply::Type::kInteger) co_return BadReply(*reply);
  co_return Ok();
}

net::awaitable<Status> RedisRateLimiter::Refund(std::vector<Check> checks, std::uint64_t amount,
                                                double acquired_at) {
  std::optional<double> at = acquired_at;
  Status done = co_await Adjust(kRefundScript, std::move(checks), amount, at);
  co_return done;
}

net::awaitable<Status> RedisRateLimiter::Charge(std::vector<Check> checks, std::uint64_t amount) {
  std::optional<double> at;
  Status done = co_await Adjust(kChargeScript, std::move(checks), amount, at);
  co_return done;
}

net::awaitable<Status> RedisRateLimiter::Ping() {
  std::vector<std::string> argv{"PING"};
  Result<RedisReply> reply = co_await Command(std::move(argv));
  if (!reply.ok()) co_return reply.error();
  if (reply->type != RedisReply::Type::kStatus) co_return BadReply(*reply);
  co_return Ok();
}

}  // namespace staple::ratelimit
