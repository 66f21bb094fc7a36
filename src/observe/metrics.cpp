#include "observe/metrics.h"

#include <fmt/format.h>

namespace staple::observe {

Histogram::Histogram() = default;

void Histogram::Observe(double seconds) {
  std::size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  const double micros = seconds > 0 ? seconds * 1e6 : 0;
  sum_micros_.fetch_add(static_cast<std::uint64_t>(micros), std::memory_order_relaxed);
}

void Histogram::Render(std::string& out, std::string_view name, std::string_view labels) const {
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    out += fmt::format("{}_bucket{{{}le=\"{}\"}} {}\n", name, labels, kBounds[i], cumulative);
  }
  cumulative += buckets_[kBounds.size()].load(std::memory_order_relaxed);
  out += fmt::format("{}_bucket{{{}le=\"+Inf\"}} {}\n", name, labels, cumulative);
  std::string plain_labels(labels);
  if (!plain_labels.empty() && plain_labels.back() == ',') plain_labels.pop_back();
  const auto braces = plain_labels.empty() ? std::string() : "{" + plain_labels + "}";
  out += fmt::format("{}_sum{} {}\n", name, braces,
                     static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) / 1e6);
  out += fmt::format("{}_count{} {}\n", name, braces, count_.load(std::memory_order_relaxed));
}

void Metrics::SetRouteLabels(std::vector<std::string> labels) {
  routes_ = std::make_unique<RouteCounters[]>(labels.size());
  route_labels_ = std::move(labels);
}

void Metrics::CountRequest(std::size_t route, int status, double seconds) {
  if (route >= route_labels_.size()) return;
  const auto s = static_cast<std::size_t>(status >= 0 && status < kStatuses ? status : 0);
  routes_[route].requests[s].fetch_add(1, std::memory_order_relaxed);
  routes_[route].latency.Observe(seconds);
}

void Metrics::CountTokens(std::int64_t prompt, std::int64_t completion) {
  if (prompt > 0) prompt_tokens_.fetch_add(static_cast<std::uint64_t>(prompt));
  if (completion > 0) completion_tokens_.fetch_add(static_cast<std::uint64_t>(completion));
}

void Metrics::CountLimiterDecision(bool allowed) {
  (allowed ? limiter_allowed_ : limiter_denied_).fetch_add(1, std::memory_order_relaxed);
}

void Metrics::CountTokenDecision(bool allowed) {
  (allowed ? token_allowed_ : token_denied_).fetch_add(1, std::memory_order_relaxed);
}

void Metrics::AddGauge(std::string name, std::string help, std::function<double()> read) {
  gauges_.push_back(Gauge{std::move(name), std::move(help), std::move(read)});
}

void Metrics::AddFamilies(std::function<void(std::string& out)> render) {
  families_.push_back(std::move(render));
}

void Metrics::AddCounter(std::string name, std::string help, std::function<double()> read) {
  gauges_.push_back(Gauge{std::move(name), std::move(help), std::move(read), "counter"});
}

std::string Metrics::Render() const {
  std::string out;
  out.reserve(16 * 1024);
  out += "# HELP staple_http_requests_total HTTP requests answered, by route and status.\n";
  out += "# TYPE staple_http_requests_total counter\n";
  for (std::size_t r = 0; r < route_labels_.size(); ++r) {
    for (std::size_t s = 0; s < routes_[r].requests.size(); ++s) {
      const auto n = routes_[r].requests[s].load(std::memory_order_relaxed);
      if (n == 0) continue;
      out += fmt::format("staple_http_requests_total{{route=\"{}\",status=\"{}\"}} {}\n",
                         route_labels_[r], s, n);
    }
  }
  out +=
      "# HELP staple_http_request_duration_seconds Time from request read to response written.\n";
  out += "# TYPE staple_http_request_duration_seconds histogram\n";
  for (std::size_t r = 0; r < route_labels_.size(); ++r) {
    routes_[r].latency.Render(out, "staple_http_request_duration_seconds",
                              fmt::format("route=\"{}\",", route_labels_[r]));
  }
  out += "# HELP staple_upstream_duration_seconds Time spent waiting for the upstream.\n";
  out += "# TYPE staple_upstream_duration_seconds histogram\n";
  upstream_latency_.Render(out, "staple_upstream_duration_seconds", "");
  const auto counter = [&out](std::string_view name, std::string_view help, std::string_view labels,
                              std::uint64_t value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{}{} {}\n", name, help, name, name, labels,
                       value);
  };
  counter("staple_upstream_errors_total", "Upstream exchanges that failed.", "",
          upstream_errors_.load());
  out += "# HELP staple_tokens_total Tokens reported by the upstream.\n";
  out += "# TYPE staple_tokens_total counter\n";
  out += fmt::format("staple_tokens_total{{kind=\"prompt\"}} {}\n", prompt_tokens_.load());
  out += fmt::format("staple_tokens_total{{kind=\"completion\"}} {}\n", completion_tokens_.load());
  out += "# HELP staple_ratelimit_decisions_total Rate limiter decisions.\n";
  out += "# TYPE staple_ratelimit_decisions_total counter\n";
  out += fmt::format("staple_ratelimit_decisions_total{{decision=\"allowed\"}} {}\n",
                     limiter_allowed_.load());
  out += fmt::format("staple_ratelimit_decisions_total{{decision=\"denied\"}} {}\n",
                     limiter_denied_.load());
  out += "# HELP staple_token_limit_decisions_total Token limit decisions (reservations).\n";
  out += "# TYPE staple_token_limit_decisions_total counter\n";
  out += fmt::format("staple_token_limit_decisions_total{{decision=\"allowed\"}} {}\n",
                     token_allowed_.load());
  out += fmt::format("staple_token_limit_decisions_total{{decision=\"denied\"}} {}\n",
                     token_denied_.load());
  counter("staple_ratelimit_errors_total", "Limiter storage failures.", "", limiter_errors_.load());
  counter("staple_failed_turns_total", "Turns that failed and were not stored.", "",
          failed_turns_.load());
  counter("staple_handler_exceptions_total",
          "Route handlers that failed with an exception (answered 500, or their stream cut).", "",
          handler_exceptions_.load());
  counter("staple_connections_total", "Client connections accepted.", "",
          connections_total_.load());
  out += "# HELP staple_connections_refused_total New connections refused (answered 503).\n";
  out += "# TYPE staple_connections_refused_total counter\n";
  out += fmt::format("staple_connections_refused_total{{reason=\"capacity\"}} {}\n",
                     refused_capacity_.load());
  out +=
      fmt::format("staple_connections_refused_total{{reason=\"peer\"}} {}\n", refused_peer_.load());
  counter("staple_connections_evicted_total",
          "Idle keep-alive connections closed to make room for a new connection.", "",
          evicted_idle_.load());
  out += "# HELP staple_open_connections Client connections currently open.\n";
  out += "# TYPE staple_open_connections gauge\n";
  out += fmt::format("staple_open_connections {}\n", open_connections_.load());
  for (const auto& gauge : gauges_) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", gauge.name, gauge.help, gauge.name,
                       gauge.type, gauge.name, gauge.read());
  }
  for (const auto& render : families_) render(out);
  return out;
}

}  // namespace staple::observe
