#include "store/retention.h"

#include <exception>
#include <limits>
#include <string>
#include <system_error>
#include <utility>

namespace staple::store {

RetentionTask::RetentionTask(ConversationStore& store, RetentionOptions options, Report report)
    : store_(store), options_(std::move(options)), report_(std::move(report)) {}

RetentionTask::~RetentionTask() { Stop(); }

Status RetentionTask::Validate() const {
  if (options_.period.count() <= 0 || options_.interval.count() <= 0 || options_.batch_rows == 0 ||
      !options_.now) {
    return MakeError(ErrorKind::kInvalidArgument,
                     "retention needs a positive period and interval, batch_rows >= 1 and a clock");
  }
  return Ok();
}

Status RetentionTask::Start() {
  if (auto valid = Validate(); !valid) return valid;
  try {
    thread_ = std::thread([this] { Loop(); });
  } catch (const std::system_error& e) {
    return MakeError(ErrorKind::kInternal,
                     std::string("cannot start the retention thread: ") + e.what());
  }
  return Ok();
}

void RetentionTask::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_.store(true);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RetentionTask::Loop() {
  for (;;) {
    const RetentionRun run = RunOnce();
    if (report_) report_(run);
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, options_.interval, [this] { return stopping_.load(); })) return;
  }
}

RetentionRun RetentionTask::RunOnce() {
  RetentionRun run;
  if (auto valid = Validate(); !valid) {
    run.error = valid.error();
    return run;
  }
  // The store resumes each step on this io_context, which runs until the run ends.
  net::io_context io;
  std::exception_ptr failure;
  net::co_spawn(io, Run(&run), [&failure](std::exception_ptr e) { failure = e; });
  io.run();
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      run.error = MakeError(ErrorKind::kInternal, std::string("retention run failed: ") + e.what());
    }
  }
  return run;
}

net::awaitable<void> RetentionTask::Run(RetentionRun* run) {
  // One cutoff for the whole run, so that a long run ends even while turns keep ageing.
  const std::chrono::system_clock::time_point cutoff = options_.now() - options_.period;
  const std::size_t batch_rows = options_.batch_rows;
  std::int64_t previous_free_pages = std::numeric_limits<std::int64_t>::max();
  while (!stopping_.load()) {
    Result<RetentionBatch> step = co_await store_.DeleteOlderThan(cutoff, batch_rows);
    if (!step) {
      run->error = step.error();
      break;
    }
    ++run->steps;
    run->deleted += step->deleted;
    run->free_pages = step->free_pages;
    const bool more_rows = step->deleted == static_cast<std::int64_t>(batch_rows);
    // Free pages left over (rows deleted faster than the steps give pages back, or by
    // DeleteMessages): more steps while they shrink; they may also grow meanwhile, then the
    // next run carries on.
    const bool more_pages = step->free_pages > 0 && step->free_pages < previous_free_pages;
    previous_free_pages = step->free_pages;
    if (!more_rows && !more_pages) break;
  }
}

}  // namespace staple::store
