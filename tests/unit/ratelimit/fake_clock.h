#pragma once

#include <atomic>

#include "ratelimit/clock.h"

namespace staple::ratelimit::testing {

// A clock that moves only when the test says so.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(double start) : now_(start) {}

  double Now() const override { return now_.load(std::memory_order_relaxed); }
  void Set(double now) { now_.store(now, std::memory_order_relaxed); }
  void Advance(double seconds) { Set(Now() + seconds); }

 private:
  std::atomic<double> now_;
};

}  // namespace staple::ratelimit::testing
