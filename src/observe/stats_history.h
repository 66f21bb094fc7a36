#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "observe/metrics.h"

// The last hour of the gateway's figures, minute by minute, for the operator console
// (GET /admin/stats): requests, client and server errors, tokens, and latency percentiles of the
// requests answered in each minute. A point is the difference of two Metrics::Totals() snapshots,
// so the hot path pays nothing: a thread takes a snapshot at every interval.
namespace staple::observe {

class StatsHistory {
 public:
  StatsHistory(const Metrics& metrics, std::chrono::seconds interval = std::chrono::seconds(60),
               std::size_t points = 60);
  ~StatsHistory();
  StatsHistory(const StatsHistory&) = delete;
  StatsHistory& operator=(const StatsHistory&) = delete;

  // Starts the sampling thread (the first point begins now). Stop() (or the destructor) ends it.
  void Start();
  void Stop();

  // Closes the current point at `now` and begins the next (the thread calls it at every
  // interval; tests call it directly).
  void Tick(std::chrono::system_clock::time_point now);

  // {"interval_seconds": 60, "points": [{"start": unix seconds, "seconds": length, "requests",
  //  "client_errors", "server_errors", "prompt_tokens", "completion_tokens", "p50_ms", "p95_ms",
  //  "p99_ms"}, ...]}, oldest first; the last point is the current, unfinished one. Percentiles
  // are read from the latency histogram's buckets (the bucket's upper bound), null without
  // requests.
  nlohmann::json ToJson(std::chrono::system_clock::time_point now) const;

 private:
  struct Point {
    std::int64_t start = 0;  // unix seconds
    double seconds = 0;
    Metrics::Totals delta;
  };
  static nlohmann::json PointJson(const Point& point);

  const Metrics& metrics_;
  const std::chrono::seconds interval_;
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<Point> points_;                       // finished points, oldest first
  Metrics::Totals at_start_;                       // the snapshot the current point began with
  std::chrono::system_clock::time_point started_;  // when the current point began
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace staple::observe
