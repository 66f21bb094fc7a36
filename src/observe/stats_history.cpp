#include "observe/stats_history.h"

#include <cmath>

namespace staple::observe {
namespace {

std::int64_t UnixSeconds(std::chrono::system_clock::time_point at) {
  return std::chrono::duration_cast<std::chrono::seconds>(at.time_since_epoch()).count();
}

// The upper bound, in milliseconds, of the bucket holding the `quantile` of `counts`; null without
// requests, and null too when it falls in the +Inf bucket (beyond the last bound).
nlohmann::json Percentile(const std::array<std::uint64_t, Histogram::kBuckets>& counts,
                          std::uint64_t total, double quantile) {
  if (total == 0) return nullptr;
  const auto rank = static_cast<std::uint64_t>(std::ceil(quantile * static_cast<double>(total)));
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    seen += counts[i];
    if (seen >= rank) {
      const double bound = Histogram::UpperBound(i);
      if (std::isinf(bound)) return nullptr;
      return bound * 1000;
    }
  }
  return nullptr;
}

}  // namespace

StatsHistory::StatsHistory(const Metrics& metrics, std::chrono::seconds interval,
                           std::size_t points)
    : metrics_(metrics),
      interval_(interval),
      capacity_(points),
      at_start_(metrics.Snapshot()),
      started_(std::chrono::system_clock::now()) {}

StatsHistory::~StatsHistory() { Stop(); }

void StatsHistory::Start() {
  thread_ = std::thread([this] {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (wake_.wait_for(lock, interval_, [this] { return stopping_; })) break;
      lock.unlock();
      Tick(std::chrono::system_clock::now());
      lock.lock();
    }
  });
}

void StatsHistory::Stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void StatsHistory::Tick(std::chrono::system_clock::time_point now) {
  const Metrics::Totals totals = metrics_.Snapshot();
  std::lock_guard lock(mutex_);
  Point point;
  point.start = UnixSeconds(started_);
  point.seconds = std::chrono::duration<double>(now - started_).count();
  point.delta = totals - at_start_;
  points_.push_back(point);
  while (points_.size() > capacity_) points_.pop_front();
  at_start_ = totals;
  started_ = now;
}

nlohmann::json StatsHistory::PointJson(const Point& point) {
  const auto& d = point.delta;
  std::uint64_t answered = 0;
  for (const auto count : d.latency) answered += count;
  return {{"start", point.start},
          {"seconds", std::round(point.seconds * 10) / 10},
          {"requests", d.requests},
          {"client_errors", d.client_errors},
          {"server_errors", d.server_errors},
          {"prompt_tokens", d.prompt_tokens},
          {"completion_tokens", d.completion_tokens},
          {"p50_ms", Percentile(d.latency, answered, 0.50)},
          {"p95_ms", Percentile(d.latency, answered, 0.95)},
          {"p99_ms", Percentile(d.latency, answered, 0.99)}};
}

nlohmann::json StatsHistory::ToJson(std::chrono::system_clock::time_point now) const {
  const Metrics::Totals totals = metrics_.Snapshot();
  std::lock_guard lock(mutex_);
  nlohmann::json points = nlohmann::json::array();
  for (const auto& point : points_) points.push_back(PointJson(point));
  Point current;
  current.start = UnixSeconds(started_);
  current.seconds = std::chrono::duration<double>(now - started_).count();
  current.delta = totals - at_start_;
  points.push_back(PointJson(current));
  return {{"interval_seconds", interval_.count()}, {"points", std::move(points)}};
}

}  // namespace staple::observe
