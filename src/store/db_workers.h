#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "common/await.h"
#include "common/net.h"
#include "common/result.h"

namespace staple::store {

using WorkerClock = std::chrono::steady_clock;
using Deadline = WorkerClock::time_point;

// An operation that a caller waits for: resumed exactly once, either by the thread that ran it or,
// when its deadline passes first, by a DeadlineWatch. Which of the two resumes it is decided by
// DeadlineWatch::Claim.
class PendingCall {
 public:
  explicit PendingCall(Deadline deadline) : deadline_(deadline) {}
  virtual ~PendingCall() = default;
  PendingCall(const PendingCall&) = delete;
  PendingCall& operator=(const PendingCall&) = delete;

  Deadline deadline() const { return deadline_; }

  // Resumes the caller with `error`. Only the one that won Claim may call it, once.
  virtual void Fail(const Error& error) = 0;

 private:
  friend class DeadlineWatch;

  const Deadline deadline_;
  // Guarded by the watch's mutex.
  bool claimed_ = false;
  std::multimap<Deadline, std::shared_ptr<PendingCall>>::iterator position_;
};

// One thread that fails pending calls whose deadline passed (with `expired`) while the thread
// that should run them is busy or stuck (an fsync that hangs, a server that stops answering).
//
// Threads: every member but Start and Stop may be called from any thread.
class DeadlineWatch {
 public:
  explicit DeadlineWatch(Error expired) : expired_(std::move(expired)) {}
  ~DeadlineWatch() { Stop(MakeError(ErrorKind::kStorage, "stopped")); }
  DeadlineWatch(const DeadlineWatch&) = delete;
  DeadlineWatch& operator=(const DeadlineWatch&) = delete;

  // Starts the thread. Throws std::system_error when it cannot be started.
  void Start();
  // Fails every call still watched with `error`, then joins the thread. Idempotent.
  void Stop(const Error& error);

  // Watches `call` until it is claimed. Call once per call, before any Claim of it.
  void Watch(std::shared_ptr<PendingCall> call);
  // Whether the caller wins the right to resume `call` (true at most once per call, and never
  // after its deadline failed it). The winner stops watching it.
  bool Claim(PendingCall& call);

 private:
  void Run();

  const Error expired_;

  std::mutex mu_;
  std::condition_variable cv_;
  // Guarded by mu_: the watched calls by deadline, and when the thread wakes up next (a call
  // with an earlier deadline must wake it).
  std::multimap<Deadline, std::shared_ptr<PendingCall>> calls_;
  Deadline wake_at_ = Deadline::max();
  bool stopping_ = false;
  std::thread thread_;
};

// A PendingCall that resumes its caller through `Done` (callable as void(R)), then drops it, so
// that whatever `Done` keeps alive (an executor's outstanding work) is released as soon as the
// caller was resumed, even while the operation itself is still running.
template <typename R, typename Done>
class PendingResult final : public PendingCall {
 public:
  PendingResult(Deadline deadline, Done done) : PendingCall(deadline), done_(std::move(done)) {}

  void Resume(R value) {
    Done done = std::move(*done_);
    done_.reset();
    done(std::move(value));
  }
  void Fail(const Error& error) override { Resume(R(error)); }

 private:
  std::optional<Done> done_;
};

// The thread, queue and deadline settings of a store built on DbWorkers (its options derive from
// this).
struct StoreThreadOptions {
  // Most writes committed in one transaction (group commit). At least 1.
  std::size_t max_batch = 256;
  // Reader threads, each with its own connection. At least 1.
  std::size_t reader_threads = 2;
  // Every operation completes within this long after it was called, its time in the queue
  // included (plus a few milliseconds of scheduling): past it, kStorage. Positive.
  std::chrono::milliseconds operation_timeout{5000};
  // Writes (reads) waiting in the queue beyond which new ones fail at once with kStorage.
  // At least 1.
  std::size_t max_queued_writes = 8192;
  std::size_t max_queued_reads = 8192;
  // Write health (see DbWorkers::CheckWrites): readiness reuses the outcome of the last commit or
  // write probe while it is at most this old, and runs a new probe otherwise. Positive.
  std::chrono::milliseconds write_probe_interval{5000};
  // While writes fail, the writer retries on its own (a write probe, after re-opening its
  // connection when the back end needs to) this long after the failure, doubling up to
  // max_write_retry, so that the store recovers without any caller writing. Positive, first <=
  // max.
  std::chrono::milliseconds first_write_retry{250};
  std::chrono::milliseconds max_write_retry{5000};
};

// kInvalidArgument naming `backend` and every bound of StoreThreadOptions when one is not met.
Status ValidateThreadOptions(const StoreThreadOptions& options, std::string_view backend);

// The threads of a conversation store: one writer thread with a bounded queue of writes that it
// commits in batches (group commit), and a pool of reader threads with a bounded queue of reads.
// The back end supplies the writer's handle (`Writer`: a connection), one handle per reader thread
// (`Reader`), its write operations (`WriteOp`, movable) and how to run a batch of them.
//
// Writes are taken from the queue in the order they were accepted, up to `max_batch` at a time:
// whatever queued up while the previous batch ran goes into the next one, so one commit (one fsync,
// one round trip) serves many writes without any added wait. The batch function runs every
// operation of the batch in one transaction and returns its outcome.
//
// Deadlines: each operation must finish within `operation_timeout` of the call, its time in the
// queue included. An operation still queued at its deadline is dropped without reaching the back
// end. A caller whose operation has not finished by its deadline is resumed with kStorage at
// the deadline, even when the thread running it is stuck (a hung fsync, a silent server). For a
// write that was already part of a running batch that error means its outcome is unknown: the
// batch may still commit it (and its `finish` still runs); the caller must not assume either way.
//
// Bounded queues: a call that finds its queue full fails at once with kStorage ("storage queue
// is full") rather than waiting; so does any call after Close().
//
// Write health: the writer remembers the outcome of its last transaction (a batch, or a write
// probe: the back end's `Probe`, one tiny write transaction). From a failure until the next
// success, writes are "failing" (WriteHealth); meanwhile the writer retries with a probe on its own
// (first_write_retry, doubling up to max_write_retry), so the failing state clears as soon as the
// database accepts writes again, whether or not anybody writes. CheckWrites (for readiness) answers
// from a recent outcome, or runs a probe when the last one is older than write_probe_interval.
//
// Callers are resumed through the `done` callbacks they pass; the awaitable forms (Write, Read)
// resume the awaiting coroutine on its own executor (see AwaitCallback).
//
// Threads: Write, Read, Submit*, PendingWrites and Close may be called from any thread.
template <typename Writer, typename Reader, typename WriteOp>
class DbWorkers {
 public:
  // Runs `ops` (in acceptance order, none past its deadline) as one transaction on the writer
  // thread and returns its outcome; `deadline` is the earliest of the operations' deadlines. On
  // failure nothing of the batch may stay applied. An exception counts as a failure.
  using RunBatch = std::function<Status(Writer&, std::span<WriteOp* const> ops, Deadline deadline)>;
  // Runs one tiny write transaction on the writer thread (re-opening the writer's connection first
  // when the back end needs to) and returns its outcome. An exception counts as a failure.
  using Probe = std::function<Status(Writer&, Deadline deadline)>;

  // `name` names the back end in messages ("SQLite"); `options` must pass ValidateThreadOptions
  // (reader_threads is the back end's business: there is one reader thread per handle). Without
  // `probe`, CheckWrites only reports the last batch's outcome and nothing is retried.
  DbWorkers(std::string name, StoreThreadOptions options, std::unique_ptr<Writer> writer,
            std::vector<std::unique_ptr<Reader>> readers, RunBatch run_batch, Probe probe = {})
      : name_(std::move(name)),
        options_(std::move(options)),
        run_batch_(std::move(run_batch)),
        probe_(std::move(probe)),
        closed_error_(MakeError(ErrorKind::kStorage, "conversation store is closed")),
        full_error_(MakeError(ErrorKind::kStorage,
                              "storage queue is full (" + name_ + " is not keeping up)")),
        timeout_error_(MakeError(ErrorKind::kStorage,
                                 name_ + " operation timed out after " +
                                     std::to_string(options_.operation_timeout.count()) + " ms")),
        watch_(timeout_error_),
        writer_(std::move(writer)),
        readers_(std::move(readers)) {}

  // Calls Close().
  ~DbWorkers() { Close(); }

  DbWorkers(const DbWorkers&) = delete;
  DbWorkers& operator=(const DbWorkers&) = delete;

  // Starts the deadline watch, the writer and one thread per reader handle; call once, before
  // anything else. On failure (kInternal) stops those already started; the object is then closed.
  Status Start();

  // Queues `op` for the writer thread. When its batch has committed or failed, `finish` (callable
  // as R(const Status& batch_status, WriteOp& op)) runs on the writer thread — also when the
  // caller's deadline has already passed — and its value resumes the caller through `done`
  // (callable as void(R), on any thread) unless the deadline did so first. A dropped operation
  // (deadline, full queue, closed) resumes the caller with kStorage and never runs `finish`.
  template <typename R, typename Finish, typename Done>
  void SubmitWrite(WriteOp op, Finish finish, Done done);

  // Queues `query` (callable as R(Reader&, Deadline)) for a reader thread; its value, or
  // kInternal when it throws, resumes the caller through `done` (callable as void(R), on any
  // thread) unless the deadline did so first.
  template <typename R, typename Query, typename Done>
  void SubmitRead(Query query, Done done);

  // The awaitable forms of SubmitWrite and SubmitRead: nothing is queued until awaited, and the
  // awaiting coroutine is resumed on its own executor.
  template <typename R, typename Finish>
  net::awaitable<R> Write(WriteOp op, Finish finish);
  template <typename R, typename Query>
  net::awaitable<R> Read(Query query);

  // Writes accepted and not yet finished (queued or in a running batch).
  std::size_t PendingWrites() const { return pending_writes_.load(std::memory_order_relaxed); }

  // Ok, or kStorage "write failing: <the back end's reason>" from a failed transaction (batch or
  // probe) until the next one succeeds. Non-blocking: an atomic load while writes succeed.
  Status WriteHealth() const;

  // The write health for readiness: WriteHealth when the last transaction finished within
  // write_probe_interval, else the outcome of a probe run now by the writer thread (or of the
  // batch it runs next, which answers the same question). Bounded by operation_timeout like any
  // operation (kStorage past it: a stuck writer is not ready either). The awaitable form resumes
  // the awaiting coroutine on its own executor; `done` is callable as void(Status), on any thread.
  template <typename Done>
  void SubmitCheckWrites(Done done);
  net::awaitable<Status> CheckWrites();

  // Stops accepting operations (later ones fail with kStorage), runs every queued write
  // (those past their deadline are dropped) and read, joins the threads, then releases the reader
  // handles and finally the writer's. Blocks while a batch is stuck; callers waiting on it still
  // fail at their deadlines meanwhile. Idempotent; must not be called from a thread that a
  // pending operation needs in order to finish.
  void Close();

 private:
  struct QueuedWrite {
    WriteOp op;
    std::shared_ptr<PendingCall> call;
    // Runs `finish` and resumes the caller; writer thread only.
    std::function<void(const Status&, WriteOp&)> finish;
  };
  struct QueuedRead {
    std::shared_ptr<PendingCall> call;
    // Runs the query and resumes the caller; reader thread only.
    std::function<void(Reader&)> run;
  };
  // A caller of CheckWrites waiting for the writer's next outcome.
  struct QueuedCheck {
    std::shared_ptr<PendingCall> call;
    // Resumes the caller with the write health; writer thread only.
    std::function<void(const Status&)> resume;
  };

  // A bounded queue of work and its wake-up: one for the writer, one for the reader pool.
  template <typename Entry>
  struct WorkQueue {
    std::mutex mu;
    std::condition_variable cv;
    // Guarded by mu.
    std::deque<Entry> entries;
    bool closed = false;
  };

  // Resumes `call` with `value` unless its deadline already did.
  template <typename R, typename Done>
  void Complete(PendingResult<R, Done>& call, R value) {
    if (watch_.Claim(call)) call.Resume(std::move(value));
  }
  void Fail(PendingCall& call, const Error& error) {
    if (watch_.Claim(call)) call.Fail(error);
  }

  // Queues `entry` and watches its call, unless `queue` is closed or holds `max` entries: then
  // fails the call at once. `on_queued` runs under the queue's lock once the entry is queued.
  template <typename Entry, typename OnQueued>
  void Enqueue(WorkQueue<Entry>& queue, std::size_t max, Entry entry, OnQueued on_queued);
  template <typename Entry>
  void CloseQueue(WorkQueue<Entry>& queue);

  void WriterLoop();
  void ReaderLoop(Reader& reader);
  // Whether a transaction ran (false when every write of the batch was past its deadline).
  bool RunWrites(std::vector<QueuedWrite>& batch);
  void RunProbe();
  // Writer thread: records a transaction's outcome, and when it failed, when to retry.
  void RecordOutcome(const Status& outcome);
  // The write health when the last outcome is younger than write_probe_interval.
  std::optional<Status> RecentHealth() const;

  // Constant after construction.
  const std::string name_;
  const StoreThreadOptions options_;
  const RunBatch run_batch_;
  const Probe probe_;
  const Error closed_error_;
  const Error full_error_;
  const Error timeout_error_;

  DeadlineWatch watch_;

  // Owned by the writer thread while it runs; released by Close().
  std::unique_ptr<Writer> writer_;
  // Reader i is owned by reader thread i while it runs; released by Close().
  std::vector<std::unique_ptr<Reader>> readers_;

  WorkQueue<QueuedWrite> writes_;
  WorkQueue<QueuedRead> reads_;

  // Queued plus running writes; written under writes_.mu or by the writer thread, read anywhere.
  std::atomic<std::size_t> pending_writes_{0};

  // CheckWrites callers waiting for the next outcome; guarded by writes_.mu.
  std::vector<QueuedCheck> checks_;

  // Write health: written by the writer thread under health_mu_; writes_failing_ is also read
  // without the lock (the cheap check of WriteHealth).
  std::atomic<bool> writes_failing_{false};
  mutable std::mutex health_mu_;
  std::string write_failure_;                // guarded by health_mu_
  std::optional<Deadline> last_outcome_at_;  // guarded by health_mu_; never before
  // Writer thread only: the current retry delay and when the next retry is due while failing.
  std::chrono::milliseconds retry_delay_{0};
  Deadline next_retry_{};

  // Serializes Close(); guarded by close_mu_.
  std::mutex close_mu_;
  bool closed_ = false;
  std::thread writer_thread_;
  std::vector<std::thread> reader_threads_;
};

// ---- Implementation ----

template <typename Writer, typename Reader, typename WriteOp>
Status DbWorkers<Writer, Reader, WriteOp>::Start() {
  try {
    watch_.Start();
    writer_thread_ = std::thread([this] { WriterLoop(); });
    reader_threads_.reserve(readers_.size());
    for (auto& reader : readers_) {
      reader_threads_.emplace_back([this, r = reader.get()] { ReaderLoop(*r); });
    }
  } catch (const std::system_error& e) {
    // Close() joins the threads that did start.
    Close();
    return MakeError(ErrorKind::kInternal,
                     "cannot start the " + name_ + " store's threads: " + e.what());
  }
  return Ok();
}

template <typename Writer, typename Reader, typename WriteOp>
void DbWorkers<Writer, Reader, WriteOp>::Close() {
  std::lock_guard close_lock(close_mu_);
  if (closed_) return;
  closed_ = true;

  // Stop accepting first; the threads then drain their queues and exit.
  CloseQueue(writes_);
  CloseQueue(reads_);

  if (writer_thread_.joinable()) writer_thread_.join();
  for (std::thread& thread : reader_threads_) {
    if (thread.joinable()) thread.join();
  }
  // Only now: while a drained batch was stuck, its callers still had to fail at their deadlines.
  watch_.Stop(closed_error_);
  // Readers before the writer, so that the writer's connection is the last one (SQLite then
  // checkpoints its WAL as it closes).
  readers_.clear();
  writer_.reset();
}

template <typename Writer, typename Reader, typename WriteOp>
template <typename R, typename Finish, typename Done>
void DbWorkers<Writer, Reader, WriteOp>::SubmitWrite(WriteOp op, Finish finish, Done done) {
  auto call = std::make_shared<PendingResult<R, Done>>(
      WorkerClock::now() + options_.operation_timeout, std::move(done));
  QueuedWrite queued{std::move(op), call, {}};
  queued.finish = [this, call, finish = std::move(finish)](const Status& status,
                                                           WriteOp& applied) mutable {
    R result = finish(status, applied);
    Complete(*call, std::move(result));
  };
  Enqueue(writes_, options_.max_queued_writes, std::move(queued),
          [this] { pending_writes_.fetch_add(1, std::memory_order_relaxed); });
}

template <typename Writer, typename Reader, typename WriteOp>
Status DbWorkers<Writer, Reader, WriteOp>::WriteHealth() const {
  if (!writes_failing_.load(std::memory_order_acquire)) return Ok();
  std::lock_guard lock(health_mu_);
  // Cleared between the load and the lock: a success came meanwhile.
  if (!writes_failing_.load(std::memory_order_relaxed)) return Ok();
  return MakeError(ErrorKind::kStorage, "write failing: " + write_failure_);
}

template <typename Writer, typename Reader, typename WriteOp>
std::optional<Status> DbWorkers<Writer, Reader, WriteOp>::RecentHealth() const {
  {
    std::lock_guard lock(health_mu_);
    if (!last_outcome_at_ ||
        WorkerClock::now() - *last_outcome_at_ >= options_.write_probe_interval) {
      return std::nullopt;
    }
  }
  return WriteHealth();
}

template <typename Writer, typename Reader, typename WriteOp>
template <typename Done>
void DbWorkers<Writer, Reader, WriteOp>::SubmitCheckWrites(Done done) {
  if (!probe_) {
    done(WriteHealth());
    return;
  }
  if (auto recent = RecentHealth()) {
    done(std::move(*recent));
    return;
  }
  auto call = std::make_shared<PendingResult<Status, Done>>(
      WorkerClock::now() + options_.operation_timeout, std::move(done));
  QueuedCheck check{call, [this, call](const Status& health) { Complete(*call, Status(health)); }};
  {
    std::lock_guard lock(writes_.mu);
    if (!writes_.closed) {
      watch_.Watch(call);
      checks_.push_back(std::move(check));
      call.reset();
    }
  }
  if (call) {
    call->Fail(closed_error_);
    return;
  }
  writes_.cv.notify_one();
}

template <typename Writer, typename Reader, typename WriteOp>
net::awaitable<Status> DbWorkers<Writer, Reader, WriteOp>::CheckWrites() {
  auto start = [this](auto done) mutable { SubmitCheckWrites(std::move(done)); };
  return AwaitCallback<Status>(std::move(start));
}

template <typename Writer, typename Reader, typename WriteOp>
template <typename R, typename Query, typename Done>
void DbWorkers<Writer, Reader, WriteOp>::SubmitRead(Query query, Done done) {
  auto call = std::make_shared<PendingResult<R, Done>>(
      WorkerClock::now() + options_.operation_timeout, std::move(done));
  QueuedRead queued{call, {}};
  queued.run = [this, call, query = std::move(query)](Reader& reader) mutable {
    std::optional<R> result;
    try {
      result.emplace(query(reader, call->deadline()));
    } catch (const std::exception& e) {
      result.emplace(MakeError(ErrorKind::kInternal, e.what()));
    }
    Complete(*call, std::move(*result));
  };
  Enqueue(reads_, options_.max_queued_reads, std::move(queued), [] {});
}

template <typename Writer, typename Reader, typename WriteOp>
template <typename Entry, typename OnQueued>
void DbWorkers<Writer, Reader, WriteOp>::Enqueue(WorkQueue<Entry>& queue, std::size_t max,
                                                 Entry entry, OnQueued on_queued) {
  const std::shared_ptr<PendingCall> call = entry.call;
  const Error* refused = nullptr;
  {
    std::lock_guard lock(queue.mu);
    if (queue.closed) {
      refused = &closed_error_;
    } else if (queue.entries.size() >= max) {
      refused = &full_error_;
    } else {
      // Watched before it is queued, so that the worker's Claim always finds it watched.
      watch_.Watch(call);
      queue.entries.push_back(std::move(entry));
      on_queued();
    }
  }
  if (refused != nullptr) {
    call->Fail(*refused);
    return;
  }
  queue.cv.notify_one();
}

template <typename Writer, typename Reader, typename WriteOp>
template <typename Entry>
void DbWorkers<Writer, Reader, WriteOp>::CloseQueue(WorkQueue<Entry>& queue) {
  {
    std::lock_guard lock(queue.mu);
    queue.closed = true;
  }
  queue.cv.notify_all();
}

// Write and Read are plain functions returning the awaitable that AwaitCallback builds, not
// coroutines: nothing runs until the caller awaits it, and no lambda is ever passed by value into
// a coroutine inside a co_await expression (g++ 12 then copies its captures bitwise and destroys
// them twice).

template <typename Writer, typename Reader, typename WriteOp>
template <typename R, typename Finish>
net::awaitable<R> DbWorkers<Writer, Reader, WriteOp>::Write(WriteOp op, Finish finish) {
  auto start = [this, op = std::move(op), finish = std::move(finish)](auto done) mutable {
    SubmitWrite<R>(std::move(op), std::move(finish), std::move(done));
  };
  return AwaitCallback<R>(std::move(start));
}

template <typename Writer, typename Reader, typename WriteOp>
template <typename R, typename Query>
net::awaitable<R> DbWorkers<Writer, Reader, WriteOp>::Read(Query query) {
  auto start = [this, query = std::move(query)](auto done) mutable {
    SubmitRead<R>(std::move(query), std::move(done));
  };
  return AwaitCallback<R>(std::move(start));
}

template <typename Writer, typename Reader, typename WriteOp>
void DbWorkers<Writer, Reader, WriteOp>::WriterLoop() {
  std::vector<QueuedWrite> batch;
  batch.reserve(options_.max_batch);
  std::vector<QueuedCheck> checks;
  for (;;) {
    bool retry_due = false;
    {
      std::unique_lock lock(writes_.mu);
      const auto has_work = [this] {
        return !writes_.entries.empty() || !checks_.empty() || writes_.closed;
      };
      if (probe_ && writes_failing_.load(std::memory_order_relaxed)) {
        // Failing: wake up for the retry even when nobody writes.
        retry_due = !writes_.cv.wait_until(lock, next_retry_, has_work);
      } else {
        writes_.cv.wait(lock, has_work);
      }
      // Closed and drained; CheckWrites callers still waiting are failed by the watch's Stop.
      if (writes_.entries.empty() && writes_.closed) return;
      // Group commit: whatever queued up while the previous batch ran goes into this one.
      const std::size_t n = std::min(options_.max_batch, writes_.entries.size());
      for (std::size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(writes_.entries.front()));
        writes_.entries.pop_front();
      }
      checks.swap(checks_);
    }
    // A batch answers the health checks as well as a probe would; a probe runs when there is no
    // batch to run (or every write of it was past its deadline).
    const bool ran = !batch.empty() && RunWrites(batch);
    batch.clear();
    if (!ran && probe_ && (retry_due || !checks.empty())) RunProbe();
    if (!checks.empty()) {
      const Status health = WriteHealth();
      for (QueuedCheck& check : checks) check.resume(health);
      checks.clear();
    }
  }
}

template <typename Writer, typename Reader, typename WriteOp>
void DbWorkers<Writer, Reader, WriteOp>::RunProbe() {
  Status status;
  try {
    status = probe_(*writer_, WorkerClock::now() + options_.operation_timeout);
  } catch (const std::exception& e) {
    status = MakeError(ErrorKind::kInternal, e.what());
  }
  RecordOutcome(status);
}

template <typename Writer, typename Reader, typename WriteOp>
void DbWorkers<Writer, Reader, WriteOp>::RecordOutcome(const Status& outcome) {
  const Deadline now = WorkerClock::now();
  if (outcome) {
    retry_delay_ = std::chrono::milliseconds(0);
  } else {
    retry_delay_ = retry_delay_.count() == 0 ? options_.first_write_retry
                                             : std::min(retry_delay_ * 2, options_.max_write_retry);
    next_retry_ = now + retry_delay_;
  }
  std::lock_guard lock(health_mu_);
  last_outcome_at_ = now;
  if (outcome) {
    write_failure_.clear();
  } else {
    write_failure_ = outcome.error().message;
  }
  writes_failing_.store(!outcome.ok(), std::memory_order_release);
}

template <typename Writer, typename Reader, typename WriteOp>
bool DbWorkers<Writer, Reader, WriteOp>::RunWrites(std::vector<QueuedWrite>& batch) {
  // Operations whose deadline passed while queued are dropped without touching the database; the
  // rest share one transaction bounded by the earliest remaining deadline.
  const Deadline now = WorkerClock::now();
  Deadline earliest = Deadline::max();
  std::vector<WriteOp*> live;
  live.reserve(batch.size());
  for (QueuedWrite& queued : batch) {
    if (queued.call->deadline() <= now) continue;
    earliest = std::min(earliest, queued.call->deadline());
    live.push_back(&queued.op);
  }

  Status status;
  if (!live.empty()) {
    try {
      status = run_batch_(*writer_, std::span<WriteOp* const>(live), earliest);
    } catch (const std::exception& e) {
      status = MakeError(ErrorKind::kInternal, e.what());
    }
    // Before any caller resumes: a caller that saw its write fail then sees writes failing.
    RecordOutcome(status);
    if (!status) {
      status = MakeError(ErrorKind::kStorage, "database write failed: " + status.error().message);
    }
  }

  // Not pending any more: a resumed caller sees its own write counted out.
  pending_writes_.fetch_sub(batch.size(), std::memory_order_relaxed);
  for (QueuedWrite& queued : batch) {
    if (queued.call->deadline() <= now) {
      Fail(*queued.call, timeout_error_);
    } else {
      queued.finish(status, queued.op);
    }
  }
  return !live.empty();
}

template <typename Writer, typename Reader, typename WriteOp>
void DbWorkers<Writer, Reader, WriteOp>::ReaderLoop(Reader& reader) {
  for (;;) {
    QueuedRead queued;
    {
      std::unique_lock lock(reads_.mu);
      reads_.cv.wait(lock, [this] { return !reads_.entries.empty() || reads_.closed; });
      if (reads_.entries.empty()) return;  // closed and drained
      queued = std::move(reads_.entries.front());
      reads_.entries.pop_front();
    }
    if (queued.call->deadline() <= WorkerClock::now()) {
      Fail(*queued.call, timeout_error_);
      continue;
    }
    queued.run(reader);
  }
}

}  // namespace staple::store
