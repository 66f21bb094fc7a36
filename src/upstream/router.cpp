#include "upstream/router.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <utility>

#include "observe/log.h"
#include "upstream/retry.h"

namespace staple::upstream {

using Clock = std::chrono::steady_clock;

// One upstream and what the router knows about its health.
struct RouterEntry {
  // Constant after construction.
  UpstreamEntry config;
  std::unique_ptr<Client> client;

  // The cooldown rule's state, guarded by mutex.
  std::mutex mutex;
  Clock::time_point window_start{};
  int window_failures = 0;
  bool cooled = false;  // a cooldown started and no probe succeeded since
  Clock::time_point cooling_until{};
  bool probing = false;  // the probe of a cooled upstream is in flight

  std::atomic<std::int64_t> in_flight{0};
  std::atomic<std::uint64_t> answered{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> cooldowns{0};
  std::atomic<std::uint64_t> hedged{0};                // hedges started for this first choice
  std::atomic<std::uint64_t> hedges_won_by_second{0};  // ... that the second candidate won
};

struct RouterShared {
  std::vector<std::unique_ptr<RouterEntry>> entries;  // constant after construction
  CooldownSettings cooldown;
  std::chrono::milliseconds total_timeout{0};
  Router::Now now;
};

bool GlobMatch(std::string_view pattern, std::string_view name) {
  // Iterative matching with one backtrack point: the last '*' seen.
  std::size_t p = 0;
  std::size_t n = 0;
  std::optional<std::size_t> star;
  std::size_t star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
    } else if (star) {
      p = *star + 1;
      n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

namespace {

using Entries = std::vector<std::unique_ptr<RouterEntry>>;

bool EntryServes(const UpstreamEntry& entry, std::string_view model) {
  for (const auto& [from, to] : entry.rename) {
    if (from == model) return true;
  }
  for (const auto& pattern : entry.models) {
    if (GlobMatch(pattern, model)) return true;
  }
  return false;
}

// The candidates for `model` in the order they are tried: priority first, then a weighted random
// order within a priority (each position drawn with probability proportional to the weight among
// those left: the exponential-key method, key = -ln(u) / weight, smallest first). A request with
// no model may go to any upstream.
std::vector<RouterEntry*> Candidates(const Entries& entries, std::string_view model) {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  struct Pick {
    RouterEntry* entry;
    double key;
  };
  std::vector<Pick> picks;
  for (const auto& entry : entries) {
    if (!model.empty() && !EntryServes(entry->config, model)) continue;
    const double u = std::max(unit(engine), 1e-300);
    picks.push_back(Pick{entry.get(), -std::log(u) / static_cast<double>(entry->config.weight)});
  }
  std::sort(picks.begin(), picks.end(), [](const Pick& a, const Pick& b) {
    if (a.entry->config.priority != b.entry->config.priority) {
      return a.entry->config.priority < b.entry->config.priority;
    }
    return a.key < b.key;
  });
  std::vector<RouterEntry*> order;
  order.reserve(picks.size());
  for (const auto& pick : picks) order.push_back(pick.entry);
  return order;
}

// A place among an upstream's requests in flight, held while its exchange (or stream) lasts.
class Slot {
 public:
  Slot() = default;
  Slot(RouterEntry* entry, bool probe) : entry_(entry), probe_(probe) {}
  Slot(Slot&& other) noexcept
      : entry_(std::exchange(other.entry_, nullptr)), probe_(other.probe_) {}
  Slot& operator=(Slot&& other) noexcept {
    Release();
    entry_ = std::exchange(other.entry_, nullptr);
    probe_ = other.probe_;
    return *this;
  }
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  ~Slot() { Release(); }

  RouterEntry* entry() const { return entry_; }
  bool probe() const { return probe_; }

 private:
  void Release() {
    if (entry_) entry_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    entry_ = nullptr;
  }
  RouterEntry* entry_ = nullptr;
  bool probe_ = false;
};

// A slot on `entry`, or std::nullopt when it is cooling down (or its probe is out) or at its cap.
std::optional<Slot> Admit(RouterEntry& entry, Clock::time_point now) {
  std::lock_guard lock(entry.mutex);
  bool probe = false;
  if (entry.cooled) {
    if (now < entry.cooling_until || entry.probing) return std::nullopt;
    probe = true;
  }
  const auto cap = entry.config.max_concurrent;
  if (cap != 0 &&
      entry.in_flight.load(std::memory_order_relaxed) >= static_cast<std::int64_t>(cap)) {
    return std::nullopt;
  }
  if (probe) entry.probing = true;
  entry.in_flight.fetch_add(1, std::memory_order_relaxed);
  return Slot(&entry, probe);
}

// Applies the cooldown rule to the outcome of one exchange on `slot`'s upstream.
void Report(const Router::Now& now_of, const CooldownSettings& rule, const Slot& slot,
            bool success) {
  RouterEntry& entry = *slot.entry();
  (success ? entry.answered : entry.failed).fetch_add(1, std::memory_order_relaxed);
  if (rule.failures <= 0) return;
  const auto now = now_of();
  std::lock_guard lock(entry.mutex);
  if (entry.cooled) {
    // Only the probe decides; requests that were under way when the cooldown began do not.
    if (!slot.probe()) return;
    entry.probing = false;
    if (success) {
      entry.cooled = false;
      entry.window_failures = 0;
      observe::Info("upstream recovered", {{"upstream", entry.config.name}});
    } else {
      entry.cooling_until = now + rule.period;
      entry.cooldowns.fetch_add(1, std::memory_order_relaxed);
      observe::Warn(
          "upstream still failing, cooling down again",
          {{"upstream", entry.config.name}, {"cooldown_ms", std::to_string(rule.period.count())}});
    }
    return;
  }
  if (success) return;
  if (entry.window_failures == 0 || now - entry.window_start > rule.window) {
    entry.window_start = now;
    entry.window_failures = 0;
  }
  if (++entry.window_failures >= rule.failures) {
    entry.cooled = true;
    entry.cooling_until = now + rule.period;
    entry.window_failures = 0;
    entry.cooldowns.fetch_add(1, std::memory_order_relaxed);
    observe::Warn("upstream failing, cooling down",
                  {{"upstream", entry.config.name},
                   {"failures", std::to_string(rule.failures)},
                   {"window_ms", std::to_string(rule.window.count())},
                   {"cooldown_ms", std::to_string(rule.period.count())}});
  }
}

// The request as `entry` receives it: its model renamed when the entry says so.
Request ForEntry(const Request& request, const RouterEntry& entry, Clock::time_point deadline) {
  Request attempt = request;
  attempt.deadline = deadline;
  for (const auto& [from, to] : entry.config.rename) {
    if (from != request.model) continue;
    auto body = nlohmann::json::parse(attempt.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_object()) {
      body["model"] = to;
      attempt.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    attempt.model = to;
    break;
  }
  return attempt;
}

Error Named(Error error, const RouterEntry& entry) {
  error.message += " (upstream " + entry.config.name + ")";
  return error;
}

Error NotServed(std::string_view model) {
  return MakeError(ErrorKind::kNotFound,
                   fmt::format("no upstream serves the model '{}'", model.substr(0, 256)));
}

Error AllSkipped(std::string_view model) {
  return MakeError(ErrorKind::kOverloaded,
                   fmt::format("every upstream for the model '{}' is cooling down or busy; "
                               "try again later",
                               model.substr(0, 256)));
}

Error DeadlinePassed() {
  return MakeError(ErrorKind::kTimeout, "upstream exchange exceeded the total timeout");
}

Clock::time_point DeadlineOf(const Request& request, std::chrono::milliseconds total) {
  const auto own = Clock::now() + total;
  return request.deadline && *request.deadline < own ? *request.deadline : own;
}

// A stream whose first body bytes were read by the router to decide on a fallback.
class RoutedStream final : public Stream {
 public:
  RoutedStream(std::unique_ptr<Stream> inner, std::optional<std::string> first, std::string name,
               Slot slot)
      : inner_(std::move(inner)),
        first_(std::move(first)),
        name_(std::move(name)),
        slot_(std::move(slot)) {}

  long status() const override { return inner_->status(); }
  const std::string& content_type() const override { return inner_->content_type(); }
  const Headers& headers() const override { return inner_->headers(); }
  const std::string& upstream() const override { return name_; }
  std::uint32_t abandoned_attempts() const override { return abandoned_; }
  void set_abandoned_attempts(std::uint32_t abandoned) { abandoned_ = abandoned; }

  net::awaitable<Result<std::optional<std::string>>> Next() override {
    if (first_) {
      std::optional<std::string> first = std::move(first_);
      first_.reset();
      co_return first;
    }
    co_return co_await inner_->Next();
  }

 private:
  std::unique_ptr<Stream> inner_;
  std::optional<std::string> first_;
  std::string name_;
  Slot slot_;
  std::uint32_t abandoned_ = 0;
};

net::awaitable<Result<Response>> SendWith(std::shared_ptr<RouterShared> shared, Request request) {
  const auto deadline = DeadlineOf(request, shared->total_timeout);
  const auto order = Candidates(shared->entries, request.model);
  if (order.empty()) co_return NotServed(request.model);
  std::optional<Result<Response>> last;
  bool asked = false;
  for (RouterEntry* entry : order) {
    if (Clock::now() >= deadline) break;
    auto slot = Admit(*entry, shared->now());
    if (!slot) continue;
    asked = true;
    Request attempt = ForEntry(request, *entry, deadline);
    auto result = co_await entry->client->Send(std::move(attempt));
    if (!result && result.error().kind == ErrorKind::kCancelled) co_return result;
    const bool failed = !result || IsRetryableStatus(result->status);
    Report(shared->now, shared->cooldown, *slot, !failed);
    if (!result) {
      last = Named(result.error(), *entry);
      continue;
    }
    result->upstream = entry->config.name;
    if (!failed) co_return result;
    last = std::move(result);
  }
  if (last) co_return std::move(*last);
  if (!asked && Clock::now() < deadline) co_return AllSkipped(request.model);
  co_return DeadlinePassed();
}

// One stream attempt on one upstream: opened, and for a success status read up to its first body
// bytes. What it ended with decides whether the next candidate is asked.
struct StreamAttempt {
  enum class Outcome {
    kAnswer,    // `stream`: a success with its first bytes, or a status no other upstream changes
    kFailed,    // `stream` with a 429/5xx status (its body still to read), or `error`
    kCancelled  // shutdown, or the loser of a hedged race
  };
  Outcome outcome = Outcome::kFailed;
  std::unique_ptr<Stream> stream;
  std::optional<Error> error;
};

net::awaitable<StreamAttempt> TryStream(std::shared_ptr<RouterShared> shared, RouterEntry* entry,
                                        Slot slot, Request attempt) {
  using Outcome = StreamAttempt::Outcome;
  StreamAttempt result;
  auto opened = co_await entry->client->OpenStream(std::move(attempt));
  if (!opened) {
    if (opened.error().kind == ErrorKind::kCancelled) {
      result.outcome = Outcome::kCancelled;
      result.error = opened.error();
      co_return result;
    }
    Report(shared->now, shared->cooldown, slot, false);
    result.error = Named(opened.error(), *entry);
    co_return result;
  }
  std::unique_ptr<Stream> stream = std::move(opened).value();
  const long status = stream->status();
  if (IsRetryableStatus(status)) {
    Report(shared->now, shared->cooldown, slot, false);
    result.stream = std::make_unique<RoutedStream>(std::move(stream), std::nullopt,
                                                   entry->config.name, std::move(slot));
    co_return result;
  }
  if (status < 200 || status > 299) {
    // The upstream's answer to this request (e.g. 400): no other upstream would say otherwise.
    Report(shared->now, shared->cooldown, slot, true);
    result.outcome = Outcome::kAnswer;
    result.stream = std::make_unique<RoutedStream>(std::move(stream), std::nullopt,
                                                   entry->config.name, std::move(slot));
    co_return result;
  }
  // A success status: wait for the first body bytes before committing to this upstream, so that
  // one that breaks or stays silent before its first token is still replaced.
  auto first = co_await stream->Next();
  if (!first) {
    if (first.error().kind == ErrorKind::kCancelled) {
      result.outcome = Outcome::kCancelled;
      result.error = first.error();
      co_return result;
    }
    Report(shared->now, shared->cooldown, slot, false);
    result.error = Named(first.error(), *entry);
    co_return result;
  }
  if (!first->has_value()) {
    Report(shared->now, shared->cooldown, slot, false);
    result.error =
        Named(MakeError(ErrorKind::kUpstream, "upstream stream ended before any data"), *entry);
    co_return result;
  }
  Report(shared->now, shared->cooldown, slot, true);
  result.outcome = Outcome::kAnswer;
  result.stream = std::make_unique<RoutedStream>(std::move(stream), std::move(*first),
                                                 entry->config.name, std::move(slot));
  co_return result;
}

// Two attempts racing (a hedged request): each one's result lands here, and the waiting coroutine
// is woken through `wake`. All on one io_context thread.
struct Race {
  explicit Race(const net::any_io_executor& executor) : wake(executor) {}
  net::steady_timer wake;
  std::optional<StreamAttempt> results[2];
  std::shared_ptr<Cancellation> cancel[2];
};

net::awaitable<void> RunInRace(std::shared_ptr<Race> race, int index,
                               std::shared_ptr<RouterShared> shared, RouterEntry* entry, Slot slot,
                               Request attempt) {
  StreamAttempt result =
      co_await TryStream(std::move(shared), entry, std::move(slot), std::move(attempt));
  race->results[index] = std::move(result);
  race->wake.cancel();
}

// Waits until `race->wake` is cancelled or `until` passes. `race` is kept alive by the caller.
net::awaitable<void> WaitForRace(Race* race, Clock::time_point until) {
  race->wake.expires_at(until);
  boost::system::error_code ignored;
  co_await race->wake.async_wait(net::redirect_error(net::use_awaitable, ignored));
}

void Spawn(std::shared_ptr<Race> race, int index, std::shared_ptr<RouterShared> shared,
           RouterEntry* entry, Slot slot, Request attempt, const net::any_io_executor& executor) {
  race->cancel[index] = std::make_shared<Cancellation>();
  attempt.cancellation = race->cancel[index];
  net::co_spawn(
      executor,
      RunInRace(race, index, std::move(shared), entry, std::move(slot), std::move(attempt)),
      [](std::exception_ptr error) {
        if (!error) return;
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          observe::Error("hedged upstream attempt failed", {{"error", e.what()}});
        }
      });
}

net::awaitable<Result<std::unique_ptr<Stream>>> OpenStreamWith(std::shared_ptr<RouterShared> shared,
                                                               Request request) {
  using Outcome = StreamAttempt::Outcome;
  const auto deadline = DeadlineOf(request, shared->total_timeout);
  const auto order = Candidates(shared->entries, request.model);
  if (order.empty()) co_return NotServed(request.model);
  // The last failure: an error, or a stream with an error status (its body is still to read).
  StreamAttempt last;
  bool asked = false;
  // What one finished attempt means: its stream to answer with, or a failure to remember.
  auto settle = [&last](StreamAttempt& attempt) -> std::optional<std::unique_ptr<Stream>> {
    if (attempt.outcome == Outcome::kAnswer) return std::move(attempt.stream);
    if (attempt.outcome == Outcome::kFailed) last = std::move(attempt);
    return std::nullopt;
  };
  for (std::size_t i = 0; i < order.size(); ++i) {
    RouterEntry* entry = order[i];
    if (Clock::now() >= deadline) break;
    auto slot = Admit(*entry, shared->now());
    if (!slot) continue;
    asked = true;
    Request attempt = ForEntry(request, *entry, deadline);
    const auto hedge_after = entry->config.hedge_after;
    if (hedge_after.count() <= 0 || i + 1 == order.size()) {
      auto attempt_shared = shared;  // named: g++ 12 and copies in a co_await call (STYLE.md)
      StreamAttempt tried = co_await TryStream(std::move(attempt_shared), entry, std::move(*slot),
                                               std::move(attempt));
      if (tried.outcome == Outcome::kCancelled) co_return *tried.error;
      if (auto answer = settle(tried)) co_return std::move(*answer);
      continue;
    }

    // Hedged: the first attempt runs on its own; if it has not finished after hedge_after, the
    // next admissible candidate runs beside it, and the first answer wins.
    const auto executor = co_await net::this_coro::executor;
    auto race = std::make_shared<Race>(executor);
    Spawn(race, 0, shared, entry, std::move(*slot), std::move(attempt), executor);
    const Clock::time_point hedge_at = std::min(Clock::now() + hedge_after, deadline);
    co_await WaitForRace(race.get(), hedge_at);
    int running = 1;
    if (!race->results[0] && Clock::now() < deadline) {
      for (std::size_t j = i + 1; j < order.size(); ++j) {
        auto second_slot = Admit(*order[j], shared->now());
        if (!second_slot) continue;
        entry->hedged.fetch_add(1, std::memory_order_relaxed);
        Request second = ForEntry(request, *order[j], deadline);
        Spawn(race, 1, shared, order[j], std::move(*second_slot), std::move(second), executor);
        running = 2;
        i = j;  // the candidates up to here are in the race
        break;
      }
    }
    // Collect results until one answers or every runner is done.
    std::optional<std::unique_ptr<Stream>> winner;
    int finished = 0;
    bool seen[2] = {false, false};
    while (!winner && finished < running) {
      for (int k = 0; k < running; ++k) {
        if (seen[k] || !race->results[k]) continue;
        seen[k] = true;
        ++finished;
        if (race->results[k]->outcome == Outcome::kCancelled) {
          // Shutdown (no hedged runner is cancelled before a winner exists).
          if (race->cancel[1 - k]) race->cancel[1 - k]->Cancel();
          co_return *race->results[k]->error;
        }
        winner = settle(*race->results[k]);
        if (winner) {
          if (k == 1) entry->hedges_won_by_second.fetch_add(1, std::memory_order_relaxed);
          if (running == 2 && !race->results[1 - k]) {
            race->cancel[1 - k]->Cancel();
            // Routed streams only come out of TryStream.
            static_cast<RoutedStream&>(**winner).set_abandoned_attempts(1);
          }
          break;
        }
      }
      if (!winner && finished < running) {
        const Clock::time_point forever = Clock::time_point::max();
        co_await WaitForRace(race.get(), forever);
      }
    }
    if (winner) {
      // The loser, cancelled or finished, is dropped with the race; a loser that also answered is
      // destroyed here, which cancels its transfer.
      co_return std::move(*winner);
    }
  }
  if (last.stream) co_return std::move(last.stream);
  if (last.error) co_return *last.error;
  if (!asked && Clock::now() < deadline) co_return AllSkipped(request.model);
  co_return DeadlinePassed();
}

}  // namespace

Router::Router(RouterSettings settings, const ClientFactory& make_client,
               std::chrono::milliseconds total_timeout, Now now)
    : shared_(std::make_shared<RouterShared>()) {
  shared_->cooldown = settings.cooldown;
  shared_->total_timeout = total_timeout;
  shared_->now = std::move(now);
  for (auto& config : settings.upstreams) {
    auto entry = std::make_unique<RouterEntry>();
    entry->client = make_client(config);
    entry->config = std::move(config);
    if (entry->config.weight == 0) entry->config.weight = 1;
    shared_->entries.push_back(std::move(entry));
  }
}

Router::~Router() { Shutdown(); }

net::awaitable<Result<Response>> Router::Send(Request request) {
  return SendWith(shared_, std::move(request));
}

net::awaitable<Result<std::unique_ptr<Stream>>> Router::OpenStream(Request request) {
  return OpenStreamWith(shared_, std::move(request));
}

void Router::Shutdown() {
  for (const auto& entry : shared_->entries) entry->client->Shutdown();
}

bool Router::Serves(std::string_view model) const {
  return std::any_of(shared_->entries.begin(), shared_->entries.end(),
                     [&](const auto& entry) { return EntryServes(entry->config, model); });
}

std::vector<std::string> Router::ListedModels() const {
  std::vector<std::string> names;
  for (const auto& entry : shared_->entries) {
    for (const auto& model : entry->config.models) {
      if (model.find_first_of("*?") == std::string::npos) names.push_back(model);
    }
    for (const auto& [from, to] : entry->config.rename) names.push_back(from);
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

std::vector<Router::UpstreamHealth> Router::Health() const {
  std::vector<UpstreamHealth> statuses;
  const auto now = shared_->now();
  for (const auto& entry : shared_->entries) {
    UpstreamHealth status;
    status.name = entry->config.name;
    {
      std::lock_guard lock(entry->mutex);
      status.cooling_down = entry->cooled && (now < entry->cooling_until || entry->probing);
    }
    status.in_flight = entry->in_flight.load(std::memory_order_relaxed);
    status.answered = entry->answered.load(std::memory_order_relaxed);
    status.failed = entry->failed.load(std::memory_order_relaxed);
    status.cooldowns = entry->cooldowns.load(std::memory_order_relaxed);
    status.hedged = entry->hedged.load(std::memory_order_relaxed);
    status.hedges_won_by_second = entry->hedges_won_by_second.load(std::memory_order_relaxed);
    statuses.push_back(std::move(status));
  }
  return statuses;
}

void Router::RenderMetrics(std::string& out) const {
  const auto statuses = Health();
  out +=
      "# HELP staple_upstream_exchanges_total Exchanges with each upstream (retries included in "
      "one), by outcome: answered (any status but 429 and 5xx) or failed (connect error, timeout, "
      "429, 5xx, a stream that broke before its first bytes).\n"
      "# TYPE staple_upstream_exchanges_total counter\n";
  for (const auto& s : statuses) {
    out +=
        fmt::format("staple_upstream_exchanges_total{{upstream=\"{}\",outcome=\"answered\"}} {}\n",
                    s.name, s.answered);
    out += fmt::format("staple_upstream_exchanges_total{{upstream=\"{}\",outcome=\"failed\"}} {}\n",
                       s.name, s.failed);
  }
  out +=
      "# HELP staple_upstream_cooldowns_total Cooldown periods started, by upstream.\n"
      "# TYPE staple_upstream_cooldowns_total counter\n";
  for (const auto& s : statuses) {
    out +=
        fmt::format("staple_upstream_cooldowns_total{{upstream=\"{}\"}} {}\n", s.name, s.cooldowns);
  }
  out +=
      "# HELP staple_upstream_available 1 when the upstream takes requests, 0 while it cools "
      "down.\n"
      "# TYPE staple_upstream_available gauge\n";
  for (const auto& s : statuses) {
    out += fmt::format("staple_upstream_available{{upstream=\"{}\"}} {}\n", s.name,
                       s.cooling_down ? 0 : 1);
  }
  out +=
      "# HELP staple_upstream_hedges_total Streams whose first choice, this upstream, was slower "
      "than hedge_after_ms, so that the next candidate was asked too; by who answered first.\n"
      "# TYPE staple_upstream_hedges_total counter\n";
  for (const auto& s : statuses) {
    out += fmt::format("staple_upstream_hedges_total{{upstream=\"{}\",won=\"first\"}} {}\n", s.name,
                       s.hedged - s.hedges_won_by_second);
    out += fmt::format("staple_upstream_hedges_total{{upstream=\"{}\",won=\"second\"}} {}\n",
                       s.name, s.hedges_won_by_second);
  }
  out +=
      "# HELP staple_upstream_in_flight Exchanges and streams open with the upstream.\n"
      "# TYPE staple_upstream_in_flight gauge\n";
  for (const auto& s : statuses) {
    out += fmt::format("staple_upstream_in_flight{{upstream=\"{}\"}} {}\n", s.name, s.in_flight);
  }
}

}  // namespace staple::upstream
