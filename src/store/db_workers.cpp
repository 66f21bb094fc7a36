#include "store/db_workers.h"

#include <string>
#include <vector>

namespace staple::store {

namespace {

// How long the watch sleeps without calls to watch. Calls watched meanwhile with a later deadline
// (any deadline of a second or more) do not need to wake it.
constexpr auto kIdleWake = std::chrono::seconds(1);

}  // namespace

Status ValidateThreadOptions(const StoreThreadOptions& options, std::string_view backend) {
  if (options.max_batch == 0 || options.reader_threads == 0 ||
      options.operation_timeout.count() <= 0 || options.max_queued_writes == 0 ||
      options.max_queued_reads == 0) {
    return MakeError(ErrorKind::kInvalidArgument,
                     std::string(backend) +
                         " store options need max_batch >= 1, reader_threads >= 1, a positive "
                         "operation_timeout and max_queued_writes, max_queued_reads >= 1");
  }
  if (options.write_probe_interval.count() <= 0 || options.first_write_retry.count() <= 0 ||
      options.max_write_retry < options.first_write_retry) {
    return MakeError(ErrorKind::kInvalidArgument,
                     std::string(backend) +
                         " store options need a positive write_probe_interval and "
                         "0 < first_write_retry <= max_write_retry");
  }
  return Ok();
}

void DeadlineWatch::Start() {
  thread_ = std::thread([this] { Run(); });
}

void DeadlineWatch::Stop(const Error& error) {
  std::vector<std::shared_ptr<PendingCall>> left;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (auto& [deadline, call] : calls_) {
      call->claimed_ = true;
      left.push_back(std::move(call));
    }
    calls_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& call : left) call->Fail(error);
}

void DeadlineWatch::Watch(std::shared_ptr<PendingCall> call) {
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    const Deadline deadline = call->deadline();
    PendingCall& watched = *call;
    watched.position_ = calls_.emplace(deadline, std::move(call));
    wake = deadline < wake_at_;
  }
  // Deadlines mostly come later than the thread's next wake-up (it wakes at least every
  // kIdleWake): then the thread is left asleep, and a call costs no context switch.
  if (wake) cv_.notify_one();
}

bool DeadlineWatch::Claim(PendingCall& call) {
  // Keeps the call alive until the lock is released: the map may hold its last reference.
  std::shared_ptr<PendingCall> keep;
  std::lock_guard lock(mu_);
  if (call.claimed_) return false;
  call.claimed_ = true;
  keep = std::move(call.position_->second);
  calls_.erase(call.position_);
  return true;
}

void DeadlineWatch::Run() {
  std::vector<std::shared_ptr<PendingCall>> expired;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    const Deadline now = WorkerClock::now();
    while (!calls_.empty() && calls_.begin()->first <= now) {
      auto first = calls_.begin();
      first->second->claimed_ = true;
      expired.push_back(std::move(first->second));
      calls_.erase(first);
    }
    if (!expired.empty()) {
      // Resumed without the lock: a caller's callback may call back into the store.
      lock.unlock();
      for (auto& call : expired) call->Fail(expired_);
      expired.clear();
      lock.lock();
      continue;
    }
    wake_at_ = calls_.empty() ? now + kIdleWake : calls_.begin()->first;
    cv_.wait_until(lock, wake_at_);
  }
}

}  // namespace staple::store
