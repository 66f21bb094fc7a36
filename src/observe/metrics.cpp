#include "observe/metrics.h"

#include <dirent.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#ifndef STAPLE_VERSION
#define STAPLE_VERSION "unknown"
#endif

namespace staple::observe {
namespace {

constexpr std::array<const char*, kUpstreamFailureKinds> kUpstreamFailureLabels = {
    "transport", "timeout", "status", "invalid_answer", "broken_stream", "unavailable"};

// The process's own figures, Prometheus's standard process_* names, read from /proc at render
// time (a scrape every few seconds: cheap).
struct ProcessFigures {
  double cpu_seconds = 0;
  double resident_bytes = 0;
  double virtual_bytes = 0;
  double start_time_seconds = 0;  // Unix time
  double open_fds = 0;
  double max_fds = 0;
  bool ok = false;
};

double BootTime() {
  std::ifstream stat("/proc/stat");
  std::string line;
  while (std::getline(stat, line)) {
    if (line.rfind("btime ", 0) == 0) return std::stod(line.substr(6));
  }
  return 0;
}

ProcessFigures ReadProcess() {
  ProcessFigures figures;
  std::ifstream file("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // The command name (field 2) is in parentheses and may hold spaces: fields count from after it.
  const auto close = text.rfind(')');
  if (close == std::string::npos) return figures;
  std::istringstream rest(text.substr(close + 2));
  std::string field;
  // Fields 3.. : state(3) ... utime(14) stime(15) ... starttime(22) vsize(23) rss(24).
  double utime = 0;
  double stime = 0;
  double start_ticks = 0;
  double vsize = 0;
  double rss_pages = 0;
  for (int number = 3; number <= 24 && rest >> field; ++number) {
    if (number == 14) utime = std::stod(field);
    if (number == 15) stime = std::stod(field);
    if (number == 22) start_ticks = std::stod(field);
    if (number == 23) vsize = std::stod(field);
    if (number == 24) rss_pages = std::stod(field);
  }
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  static const double boot_time = BootTime();
  figures.cpu_seconds = (utime + stime) / ticks;
  figures.start_time_seconds = boot_time + start_ticks / ticks;
  figures.virtual_bytes = vsize;
  figures.resident_bytes = rss_pages * static_cast<double>(sysconf(_SC_PAGESIZE));
  if (DIR* fds = opendir("/proc/self/fd")) {
    std::size_t count = 0;
    while (const dirent* entry = readdir(fds)) {
      if (entry->d_name[0] != '.') ++count;
    }
    closedir(fds);
    figures.open_fds = static_cast<double>(count > 0 ? count - 1 : 0);  // less the DIR's own
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) figures.max_fds = static_cast<double>(limit.rlim_cur);
  figures.ok = true;
  return figures;
}

void RenderProcess(std::string& out) {
  const ProcessFigures figures = ReadProcess();
  if (!figures.ok) return;
  const auto family = [&out](std::string_view name, std::string_view type, std::string_view help,
                             double value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
  };
  family("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.",
         figures.cpu_seconds);
  family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
         figures.resident_bytes);
  family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
         figures.virtual_bytes);
  family("process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.", figures.start_time_seconds);
  family("process_open_fds", "gauge", "Number of open file descriptors.", figures.open_fds);
  family("process_max_fds", "gauge", "Maximum number of open file descriptors.", figures.max_fds);
}

}  // namespace

const char* BuildVersion() { return STAPLE_VERSION; }

Histogram::Histogram() = default;

void Histogram::Observe(double seconds) {
  std::size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  const double micros = seconds > 0 ? seconds * 1e6 : 0;
  sum_micros_.fetch_add(static_cast<std::uint64_t>(micros), std::memory_order_relaxed);
}

void Histogram::AddCounts(std::array<std::uint64_t, kBuckets>& counts) const {
  for (std::size_t i = 0; i < kBuckets; ++i)
    counts[i] += buckets_[i].load(std::memory_order_relaxed);
}

double Histogram::UpperBound(std::size_t i) {
  return i < kBounds.size() ? kBounds[i] : std::numeric_limits<double>::infinity();
}

Metrics::Totals Metrics::Totals::operator-(const Totals& earlier) const {
  Totals delta;
  delta.requests = requests - earlier.requests;
  delta.client_errors = client_errors - earlier.client_errors;
  delta.server_errors = server_errors - earlier.server_errors;
  delta.prompt_tokens = prompt_tokens - earlier.prompt_tokens;
  delta.completion_tokens = completion_tokens - earlier.completion_tokens;
  for (std::size_t i = 0; i < latency.size(); ++i)
    delta.latency[i] = latency[i] - earlier.latency[i];
  return delta;
}

Metrics::Totals Metrics::Snapshot() const {
  Totals totals;
  for (std::size_t r = 0; r < route_labels_.size(); ++r) {
    const std::string& label = route_labels_[r];
    if (label == "healthz" || label == "readyz" || label == "/metrics" ||
        label.starts_with("/admin") || label.starts_with("/console")) {
      continue;
    }
    for (std::size_t s = 0; s < routes_[r].requests.size(); ++s) {
      const auto n = routes_[r].requests[s].load(std::memory_order_relaxed);
      totals.requests += n;
      if (s >= 400 && s < 500) totals.client_errors += n;
      if (s >= 500) totals.server_errors += n;
    }
    routes_[r].latency.AddCounts(totals.latency);
  }
  totals.prompt_tokens = prompt_tokens_.load(std::memory_order_relaxed);
  totals.completion_tokens = completion_tokens_.load(std::memory_order_relaxed);
  return totals;
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
  out +=
      "# HELP staple_upstream_first_token_seconds Time from a stream's request to its first "
      "bytes from the upstream.\n";
  out += "# TYPE staple_upstream_first_token_seconds histogram\n";
  first_token_latency_.Render(out, "staple_upstream_first_token_seconds", "");
  out += "# HELP staple_upstream_errors_total Upstream exchanges that failed, by kind.\n";
  out += "# TYPE staple_upstream_errors_total counter\n";
  for (std::size_t k = 0; k < kUpstreamFailureKinds; ++k) {
    out += fmt::format("staple_upstream_errors_total{{kind=\"{}\"}} {}\n",
                       kUpstreamFailureLabels[k], upstream_errors_[k].load());
  }
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
  out += "# HELP staple_build_info The running build (always 1).\n";
  out += "# TYPE staple_build_info gauge\n";
  out += fmt::format("staple_build_info{{version=\"{}\"}} 1\n", BuildVersion());
  RenderProcess(out);
  return out;
}

}  // namespace staple::observe
