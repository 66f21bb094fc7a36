#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"
#include "upstream/client.h"
#include "upstream/routes.h"

namespace staple::upstream {

struct RouterShared;

// Many upstreams behind one Client (STAPLE_UPSTREAMS, README "Upstreams").
//
// Routing: Request::model picks the candidates, the upstreams whose `models` (exact names or
// globs) or `rename` keys match it. They are tried in priority order (lower first); within one
// priority in a weighted random order (an upstream of weight 3 is tried first three times as often
// as one of weight 1). Weighted random rather than least-outstanding-requests: it needs no shared
// counter on the hot path, splits by the operator's weights whatever the latencies, and an
// upstream that is slow because it is overloaded is caught by its concurrency cap and cooldown.
// A request whose model no upstream serves fails with kNotFound before anything is sent.
//
// Each upstream has its own Client (its base URL, key, timeouts and retries): that client's own
// retries run first; then, on a connect error, a timeout, a 429 or a 5xx, the next candidate is
// asked, within one deadline for all of them (the router's total timeout, or Request::deadline).
// A stream falls back only until its first body bytes have arrived: OpenStream() waits for them
// (an upstream that answers 200 and then breaks or stays silent counts as failed), and never
// after it returned. When every candidate failed, the last failure is returned: an error status
// as the Response, otherwise the Error. Another status (2xx, 4xx) is the answer, whoever gave it.
// A renamed model is written into the request body's `model` for that upstream only.
//
// Cooldown: an upstream that fails `cooldown.failures` times within `cooldown.window` is skipped
// for `cooldown.period`; then the first request that picks it is its probe (others skip it while
// the probe runs): success makes it healthy, failure starts another period. An upstream at its
// `max_concurrent` cap is skipped too. When every candidate is skipped, the request fails at once
// with kUnavailable, naming the model, instead of waiting for a timeout.
//
// Hedged first token (UpstreamEntry::hedge_after, streams only): when the upstream a stream is
// first sent to has sent no body bytes after hedge_after, the next admissible candidate is asked
// too; the first of the two to send body bytes (or a status that is an answer) wins, the other
// is cancelled (Request::cancellation) and counted in the winner's abandoned_attempts(). A
// failure of either leaves the other running; when both fail, the candidates after them follow.
// Non-streaming requests are never hedged: their first byte is the whole answer, and a second
// one would double the cost of every slow answer.
//
// Thread-safe. The per-upstream clients' own rules apply (see CurlClient).
class Router final : public Client {
 public:
  using ClientFactory = std::function<std::unique_ptr<Client>(const UpstreamEntry& entry)>;
  using Now = std::function<std::chrono::steady_clock::time_point()>;

  // `settings` is valid (config/upstreams_file.h checked it). `total_timeout`: the deadline of a
  // whole exchange across candidates when Request::deadline sets none. `now`: the clock of the
  // cooldown rule (tests move it by hand).
  Router(RouterSettings settings, const ClientFactory& make_client,
         std::chrono::milliseconds total_timeout, Now now = std::chrono::steady_clock::now);
  ~Router() override;
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  net::awaitable<Result<Response>> Send(Request request) override;
  net::awaitable<Result<std::unique_ptr<Stream>>> OpenStream(Request request) override;
  // Shuts every upstream's client down.
  void Shutdown() override;

  // Whether some upstream serves `model`.
  bool Serves(std::string_view model) const;
  // The model names the configuration lists by name (exact `models` entries and `rename` keys,
  // not globs), sorted and unique: what GET /v1/models answers.
  std::vector<std::string> ListedModels() const;

  struct UpstreamHealth {
    std::string name;
    bool cooling_down = false;  // skipped now (a probe in flight counts as cooling down)
    std::int64_t in_flight = 0;
    std::uint64_t answered = 0;   // exchanges that ended with an answer (any status but 429/5xx)
    std::uint64_t failed = 0;     // connect errors, timeouts, 429, 5xx, broken first bytes
    std::uint64_t cooldowns = 0;  // cooldown periods started
    std::uint64_t hedged = 0;     // streams first sent here that were hedged after hedge_after
    std::uint64_t hedges_won_by_second = 0;  // ... and answered first by the other candidate
  };
  std::vector<UpstreamHealth> Health() const;

  // Prometheus text of the families above, labelled by upstream (observe::Metrics::AddFamily).
  void RenderMetrics(std::string& out) const;

 private:
  std::shared_ptr<RouterShared> shared_;
};

// Whether `name` matches `pattern`: '*' matches any run of characters (also none), '?' exactly
// one, everything else itself.
bool GlobMatch(std::string_view pattern, std::string_view name);

}  // namespace staple::upstream
