#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "common/net.h"
#include "common/result.h"
#include "store/conversation_store.h"

namespace staple::store {

struct RetentionOptions {
  // Messages older than this are deleted. Positive.
  std::chrono::seconds period{0};
  // Time between the end of one run and the start of the next. Positive.
  std::chrono::milliseconds interval{60000};
  // Messages looked at (and at most deleted) per step; each step is one short write. At least 1.
  std::size_t batch_rows = 500;
  // The wall clock the cutoff is counted from (tests inject their own).
  std::function<std::chrono::system_clock::time_point()> now = [] {
    return std::chrono::system_clock::now();
  };
};

// What one run did.
struct RetentionRun {
  std::int64_t deleted = 0;     // messages deleted
  std::int64_t free_pages = 0;  // unused pages left in the file after the last step
  std::size_t steps = 0;        // DeleteOlderThan calls
  std::optional<Error> error;   // the step that failed, ending the run
};

// Every run repeats ConversationStore::DeleteOlderThan(now - period, batch_rows) while steps
// delete a full batch, and while the file's free pages still shrink (each step gives some back to
// the file system), then stops; the next run picks up what is left. Each step is one queued write
// of its own, so turns keep committing between steps. A failed step ends the run; the next run
// tries again.
//
// Threads: Start runs the first run at once and then one run every `interval` on a thread of the
// task's own, each reported through `report` on that thread. Stop ends it after the step in
// progress. RunOnce runs one run on the calling thread instead (for tests and commands); it blocks,
// so never call it on an I/O thread. The store must outlive the task.
class RetentionTask {
 public:
  using Report = std::function<void(const RetentionRun&)>;

  // kInvalidArgument through Start/RunOnce when `options` break their bounds.
  RetentionTask(ConversationStore& store, RetentionOptions options, Report report);
  // Calls Stop().
  ~RetentionTask();

  RetentionTask(const RetentionTask&) = delete;
  RetentionTask& operator=(const RetentionTask&) = delete;

  // Checks the options, then starts the thread. Call once.
  Status Start();
  // Ends the thread after the step in progress (bounded by the store's operation timeout) and
  // joins it. Idempotent.
  void Stop();

  // One run on the calling thread. An error in the options is the run's error.
  RetentionRun RunOnce();

 private:
  Status Validate() const;
  void Loop();
  net::awaitable<void> Run(RetentionRun* run);

  // Constant after construction.
  ConversationStore& store_;
  const RetentionOptions options_;
  const Report report_;

  std::atomic<bool> stopping_{false};
  std::mutex mu_;  // with cv_: wakes the thread's wait between runs on Stop
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace staple::store
