#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace staple::observe {

// Why an upstream exchange failed: staple_upstream_errors_total's `kind` label.
enum class UpstreamFailureKind {
  kTransport,      // connect error, reset, TLS, DNS: no answer at all
  kTimeout,        // connect, first-byte, idle or total deadline
  kStatus,         // an error status (4xx/5xx) from the upstream
  kInvalidAnswer,  // a 2xx answer that is not a completion (or not an event stream)
  kBrokenStream,   // a stream that broke off, or carried the upstream's error event
  kUnavailable,    // no upstream could be asked: all cooling down or at their caps
};
inline constexpr std::size_t kUpstreamFailureKinds = 6;

// A fixed-bucket latency histogram in seconds. Thread-safe, lock-free. The buckets reach 600 s:
// the default upstream timeout is 120 s and a stream may last 600 s (STAPLE_UPSTREAM_*).
class Histogram {
 public:
  static constexpr std::size_t kBuckets = 21;  // the bounds below, then +Inf

  Histogram();
  void Observe(double seconds);
  // Adds this histogram's per-bucket counts (not cumulative) to `counts`.
  void AddCounts(std::array<std::uint64_t, kBuckets>& counts) const;
  // The upper bound of bucket `i` in seconds (+Inf for the last).
  static double UpperBound(std::size_t i);
  // Appends Prometheus text lines for `name` with extra `labels` ("" or `route="x",`).
  void Render(std::string& out, std::string_view name, std::string_view labels) const;

 private:
  static constexpr std::array<double, 20> kBounds = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
      1,      2.5,   5,      10,    20,   30,    60,   120, 300,  600};
  static_assert(kBounds.size() + 1 == kBuckets);
  std::array<std::atomic<std::uint64_t>, kBounds.size() + 1> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_micros_{0};
};

// The process's metrics, rendered in the Prometheus text format by Render(). Thread-safe once
// serving; SetRouteLabels and AddGauge are start-up calls.
class Metrics {
 public:
  Metrics() = default;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Declares the `route` label values of the request counters: request counts then name a route by
  // its index in `labels` (the router's interned labels), so counting is an array index, never a
  // lookup. Call once before serving, before any CountRequest; it resets the request counters.
  // Until then there are no routes and CountRequest counts nothing.
  void SetRouteLabels(std::vector<std::string> labels);
  // Counts one answered request of route number `route` (an index into the labels set above;
  // others are ignored).
  void CountRequest(std::size_t route, int status, double seconds);
  // A route handler failed with an exception (the server answered 500 or cut the stream).
  void CountHandlerException() { handler_exceptions_.fetch_add(1, std::memory_order_relaxed); }
  void ObserveUpstream(double seconds) { upstream_latency_.Observe(seconds); }
  // A stream's first body bytes from the upstream, counted from the request.
  void ObserveFirstToken(double seconds) { first_token_latency_.Observe(seconds); }
  void CountUpstreamError(UpstreamFailureKind kind) {
    upstream_errors_[static_cast<std::size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
  }
  void CountTokens(std::int64_t prompt, std::int64_t completion);
  void CountLimiterDecision(bool allowed);
  void CountTokenDecision(bool allowed);
  void CountLimiterError() { limiter_errors_.fetch_add(1, std::memory_order_relaxed); }
  void CountFailedTurn() { failed_turns_.fetch_add(1, std::memory_order_relaxed); }
  void ConnectionOpened() {
    open_connections_.fetch_add(1, std::memory_order_relaxed);
    connections_total_.fetch_add(1, std::memory_order_relaxed);
  }
  void ConnectionClosed() { open_connections_.fetch_sub(1, std::memory_order_relaxed); }
  // A new connection was refused: the connection cap (`by_peer` false) or its peer's share was
  // reached and no idle connection could make room.
  void CountConnectionRefused(bool by_peer) {
    (by_peer ? refused_peer_ : refused_capacity_).fetch_add(1, std::memory_order_relaxed);
  }
  // An idle keep-alive connection was closed to make room for a new one.
  void CountIdleConnectionEvicted() { evicted_idle_.fetch_add(1, std::memory_order_relaxed); }

  // A gauge read at render time (e.g. the store's queue depth). Register before serving.
  void AddGauge(std::string name, std::string help, std::function<double()> read);
  // The same for a counter kept by a subsystem (a value that only grows, e.g. rows deleted by
  // retention); rendered with TYPE counter.
  void AddCounter(std::string name, std::string help, std::function<double()> read);

  // Families with labels that a subsystem renders itself (HELP, TYPE and samples), appended at
  // render time. Register before serving.
  void AddFamilies(std::function<void(std::string& out)> render);

  // Renders every family: Staple's, the process's (process_*, from /proc) and
  // staple_build_info.
  std::string Render() const;

  // Running totals for the operator console (StatsHistory): the answered requests of every route
  // but the operational ones (health, metrics, admin, console), their 4xx and 5xx, their latency
  // buckets, and the tokens. Relaxed reads: a snapshot, not a transaction.
  struct Totals {
    std::uint64_t requests = 0;
    std::uint64_t client_errors = 0;
    std::uint64_t server_errors = 0;
    std::uint64_t prompt_tokens = 0;
    std::uint64_t completion_tokens = 0;
    std::array<std::uint64_t, Histogram::kBuckets> latency{};
    Totals operator-(const Totals& earlier) const;
  };
  Totals Snapshot() const;

 private:
  static constexpr int kStatuses = 600;
  struct RouteCounters {
    std::array<std::atomic<std::uint64_t>, kStatuses> requests{};
    Histogram latency;
  };
  // Constant after start-up: one label and one RouteCounters per route, same index.
  std::vector<std::string> route_labels_;
  std::unique_ptr<RouteCounters[]> routes_;
  Histogram upstream_latency_;
  Histogram first_token_latency_;
  std::array<std::atomic<std::uint64_t>, kUpstreamFailureKinds> upstream_errors_{};
  std::atomic<std::uint64_t> prompt_tokens_{0};
  std::atomic<std::uint64_t> completion_tokens_{0};
  std::atomic<std::uint64_t> limiter_allowed_{0};
  std::atomic<std::uint64_t> limiter_denied_{0};
  std::atomic<std::uint64_t> limiter_errors_{0};
  std::atomic<std::uint64_t> token_allowed_{0};
  std::atomic<std::uint64_t> token_denied_{0};
  std::atomic<std::uint64_t> failed_turns_{0};
  std::atomic<std::uint64_t> handler_exceptions_{0};
  std::atomic<std::int64_t> open_connections_{0};
  std::atomic<std::uint64_t> connections_total_{0};
  std::atomic<std::uint64_t> refused_capacity_{0};
  std::atomic<std::uint64_t> refused_peer_{0};
  std::atomic<std::uint64_t> evicted_idle_{0};
  struct Gauge {
    std::string name;
    std::string help;
    std::function<double()> read;
    const char* type = "gauge";
  };
  std::vector<Gauge> gauges_;                                // constant after start-up
  std::vector<std::function<void(std::string&)>> families_;  // constant after start-up
};

// The version this binary was built as (CMake's project version).
const char* BuildVersion();

}  // namespace staple::observe
