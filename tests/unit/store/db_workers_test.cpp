// DbWorkers without a database: a back-end double whose batches and reads block on gates the test
// opens, so that queues, batching, deadlines and Close are observed in a known state. Nothing here
// sleeps: tests wait on conditions with generous timeouts, and deadlines are the component's own.

#include "store/db_workers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "store_test_util.h"

namespace staple::store {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::RunSync;

constexpr auto kPatience = std::chrono::seconds(30);

// A door the back end waits at (closed) until the test opens it.
class Gate {
 public:
  explicit Gate(bool open) : open_(open) {}
  void Open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void Shut() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  // False when the gate stayed closed for kPatience (the test then fails instead of hanging).
  bool Pass() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kPatience, [this] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_;
};

// A counter that the test can wait on.
class Counter {
 public:
  void Add() {
    {
      std::lock_guard lock(mu_);
      ++count_;
    }
    cv_.notify_all();
  }
  bool WaitFor(int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kPatience, [&] { return count_ >= n; });
  }
  int value() {
    std::lock_guard lock(mu_);
    return count_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_ = 0;
};

// Results delivered to `done` callbacks, by operation id.
template <typename R>
class Results {
 public:
  auto Callback(int id) {
    return [this, id](R value) {
      {
        std::lock_guard lock(mu_);
        ++deliveries_[id];
        values_.emplace(id, std::move(value));
      }
      cv_.notify_all();
    };
  }
  // Whether operation `id` has been answered already, without waiting.
  bool Has(int id) {
    std::lock_guard lock(mu_);
    return values_.count(id) != 0;
  }
  // Operation `id`'s result; fails the test (and returns an error) when it never comes.
  R Wait(int id) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, kPatience, [&] { return values_.count(id) != 0; })) {
      ADD_FAILURE() << "operation " << id << " was never answered";
      return R(MakeError(ErrorKind::kInternal, "never answered"));
    }
    return values_.at(id);
  }
  int Deliveries(int id) {
    std::lock_guard lock(mu_);
    return deliveries_[id];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, R> values_;
  std::map<int, int> deliveries_;
};

struct FakeWriter {};
struct FakeReader {
  int index = 0;
};
// A write is its id; a negative id makes its batch fail.
using Workers = DbWorkers<FakeWriter, FakeReader, int>;

class DbWorkersTest : public ::testing::Test {
 protected:
  StoreThreadOptions Options() {
    StoreThreadOptions options;
    options.max_batch = 16;
    options.max_queued_writes = 16;
    options.max_queued_reads = 16;
    options.operation_timeout = std::chrono::minutes(5);
    return options;
  }

  void Start(StoreThreadOptions options, int readers = 2) {
    std::vector<std::unique_ptr<FakeReader>> handles;
    for (int i = 0; i < readers; ++i) {
      handles.push_back(std::make_unique<FakeReader>(FakeReader{i}));
    }
    auto run_batch = [this](FakeWriter&, std::span<int* const> ops, Deadline) -> Status {
      std::vector<int> ids;
      bool fail = false;
      for (int* op : ops) {
        ids.push_back(*op);
        fail = fail || *op < 0;
      }
      {
        std::lock_guard lock(mu_);
        batches_.push_back(ids);
      }
      batches_entered_.Add();
      if (!batch_gate_.Pass()) return MakeError(ErrorKind::kInternal, "gate never opened");
      if (fail) return MakeError(ErrorKind::kInternal, "disk on fire");
      return Ok();
    };
    workers_ = std::make_unique<Workers>("Fake", std::move(options), std::make_unique<FakeWriter>(),
                                         std::move(handles), std::move(run_batch));
    ASSERT_TRUE(workers_->Start().ok());
  }

  void TearDown() override {
    batch_gate_.Open();
    if (workers_) workers_->Close();
  }

  // Queues write `id`; its result is the id once its batch committed.
  void SubmitWrite(int id) {
    auto finish = [this](const Status& status, int& op) -> Result<int> {
      finished_.Add();
      if (!status) return status.error();
      return op;
    };
    workers_->SubmitWrite<Result<int>>(id, std::move(finish), writes_.Callback(id));
  }

  std::vector<std::vector<int>> Batches() {
    std::lock_guard lock(mu_);
    return batches_;
  }

  Gate batch_gate_{true};
  Counter batches_entered_;
  Counter finished_;
  std::mutex mu_;
  std::vector<std::vector<int>> batches_;  // guarded by mu_
  Results<Result<int>> writes_;
  std::unique_ptr<Workers> workers_;
};

TEST_F(DbWorkersTest, WritesQueuedDuringABatchShareTheNextOne) {
  Start(Options());
  batch_gate_.Shut();
  SubmitWrite(1);
  ASSERT_TRUE(batches_entered_.WaitFor(1));
  // The writer is inside the batch of write 1; these queue up behind it.
  SubmitWrite(2);
  SubmitWrite(3);
  SubmitWrite(4);
  EXPECT_EQ(workers_->PendingWrites(), 4u);
  batch_gate_.Open();

  for (int id = 1; id <= 4; ++id) {
    Result<int> result = writes_.Wait(id);
    ASSERT_TRUE(result.ok()) << result.error().message;
    EXPECT_EQ(*result, id);
    EXPECT_EQ(writes_.Deliveries(id), 1);
  }
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(1), ElementsAre(2, 3, 4)));
  EXPECT_EQ(workers_->PendingWrites(), 0u);
}

TEST_F(DbWorkersTest, BatchesHoldAtMostMaxBatchWrites) {
  StoreThreadOptions options = Options();
  options.max_batch = 2;
  Start(options);
  batch_gate_.Shut();
  for (int id = 1; id <= 6; ++id) SubmitWrite(id);
  batch_gate_.Open();
  for (int id = 1; id <= 6; ++id) ASSERT_TRUE(writes_.Wait(id).ok());
  for (const auto& batch : Batches()) EXPECT_LE(batch.size(), 2u);
}

TEST_F(DbWorkersTest, AFullWriteQueueFailsAtOnce) {
  StoreThreadOptions options = Options();
  options.max_queued_writes = 2;
  Start(options);
  batch_gate_.Shut();
  SubmitWrite(1);
  ASSERT_TRUE(batches_entered_.WaitFor(1));
  SubmitWrite(2);
  SubmitWrite(3);
  // The queue holds 2 and 3 (1 is running): 4 is answered before SubmitWrite returns.
  SubmitWrite(4);
  ASSERT_TRUE(writes_.Has(4));
  Result<int> refused = writes_.Wait(4);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(refused.error().message, HasSubstr("storage queue is full"));
  EXPECT_EQ(workers_->PendingWrites(), 3u);

  batch_gate_.Open();
  for (int id = 1; id <= 3; ++id) EXPECT_TRUE(writes_.Wait(id).ok());
  // Room again.
  SubmitWrite(5);
  EXPECT_TRUE(writes_.Wait(5).ok());
  EXPECT_EQ(finished_.value(), 4);  // the refused write never reached its finish
}

TEST_F(DbWorkersTest, AFullReadQueueFailsAtOnce) {
  StoreThreadOptions options = Options();
  options.max_queued_reads = 1;
  Start(options, /*readers=*/1);
  Gate read_gate(false);
  Counter reading;
  Results<Result<int>> reads;
  auto blocked = [&](FakeReader&, Deadline) -> Result<int> {
    reading.Add();
    if (!read_gate.Pass()) return MakeError(ErrorKind::kInternal, "gate never opened");
    return 1;
  };
  workers_->SubmitRead<Result<int>>(blocked, reads.Callback(1));
  ASSERT_TRUE(reading.WaitFor(1));
  auto quick = [](FakeReader&, Deadline) -> Result<int> { return 2; };
  workers_->SubmitRead<Result<int>>(quick, reads.Callback(2));  // queued
  workers_->SubmitRead<Result<int>>(quick, reads.Callback(3));  // refused
  ASSERT_TRUE(reads.Has(3));
  Result<int> refused = reads.Wait(3);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(refused.error().message, HasSubstr("storage queue is full"));

  read_gate.Open();
  EXPECT_EQ(*reads.Wait(1), 1);
  EXPECT_EQ(*reads.Wait(2), 2);
}

TEST_F(DbWorkersTest, AStalledWriterFailsWaitingCallersAtTheirDeadline) {
  StoreThreadOptions options = Options();
  // Long enough for the idle writer to take write 1 before its deadline, even on a busy machine.
  options.operation_timeout = std::chrono::milliseconds(200);
  Start(options);
  batch_gate_.Shut();  // the "fsync" hangs until the test opens the gate

  std::atomic<int> finished{0};
  auto finish = [&finished](const Status& status, int&) -> Status {
    finished.fetch_add(1);
    return status;
  };
  // Awaited from a coroutine on this thread's io_context: resumed at the deadline, and the
  // io_context then runs out of work although the writer still holds the operation.
  Status stalled = RunSync(workers_->Write<Status>(1, finish));
  ASSERT_FALSE(stalled.ok());
  EXPECT_EQ(stalled.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(stalled.error().message, HasSubstr("timed out after 200 ms"));
  ASSERT_TRUE(batches_entered_.WaitFor(1));

  // A write queued behind the stalled batch fails at its deadline too.
  SubmitWrite(2);
  Result<int> queued = writes_.Wait(2);
  ASSERT_FALSE(queued.ok());
  EXPECT_EQ(queued.error().kind, ErrorKind::kStorage);

  // Released, the stalled batch still commits (the caller's outcome was "unknown"); the expired
  // write 2 is dropped without reaching the back end, and Close returns.
  batch_gate_.Open();
  workers_->Close();
  EXPECT_EQ(finished.load(), 1);
  EXPECT_EQ(writes_.Deliveries(2), 1);
  EXPECT_EQ(finished_.value(), 0);
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(1)));
  EXPECT_EQ(workers_->PendingWrites(), 0u);
}

TEST_F(DbWorkersTest, AStalledReaderFailsItsCallerAtTheDeadline) {
  StoreThreadOptions options = Options();
  options.operation_timeout = std::chrono::milliseconds(50);
  Start(options, /*readers=*/1);
  Gate read_gate(false);
  auto stalled = [&read_gate](FakeReader&, Deadline) -> Status {
    if (!read_gate.Pass()) return MakeError(ErrorKind::kInternal, "gate never opened");
    return Ok();
  };
  Status read = RunSync(workers_->Read<Status>(stalled));
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.error().kind, ErrorKind::kStorage);
  read_gate.Open();
  workers_->Close();
}

TEST_F(DbWorkersTest, ReadsRunConcurrentlyOnThePool) {
  Start(Options(), /*readers=*/3);
  // Each read waits until all three are running at once: only a pool of three can answer them.
  std::mutex mu;
  std::condition_variable cv;
  int running = 0;
  auto meet = [&](FakeReader& reader, Deadline) -> Result<int> {
    std::unique_lock lock(mu);
    ++running;
    cv.notify_all();
    if (!cv.wait_for(lock, kPatience, [&] { return running == 3; })) {
      return MakeError(ErrorKind::kInternal, "reads ran one after another");
    }
    return reader.index;
  };
  Results<Result<int>> reads;
  for (int id = 1; id <= 3; ++id) workers_->SubmitRead<Result<int>>(meet, reads.Callback(id));
  std::vector<int> readers;
  for (int id = 1; id <= 3; ++id) {
    Result<int> result = reads.Wait(id);
    ASSERT_TRUE(result.ok()) << result.error().message;
    readers.push_back(*result);
  }
  EXPECT_THAT(readers, ::testing::UnorderedElementsAre(0, 1, 2));
}

net::awaitable<void> ReadOnThisThread(Workers* workers, std::thread::id* resumed_on,
                                      std::thread::id* ran_on) {
  auto query = [ran_on](FakeReader&, Deadline) -> Status {
    *ran_on = std::this_thread::get_id();
    return Ok();
  };
  Status status = co_await workers->Read<Status>(std::move(query));
  EXPECT_TRUE(status.ok());
  *resumed_on = std::this_thread::get_id();
}

TEST_F(DbWorkersTest, CoroutinesAreResumedOnTheirOwnExecutor) {
  Start(Options());
  std::thread::id resumed_on;
  std::thread::id ran_on;
  net::io_context io;
  net::co_spawn(io, ReadOnThisThread(workers_.get(), &resumed_on, &ran_on),
                [](std::exception_ptr e) {
                  if (e) std::rethrow_exception(e);
                });
  io.run();
  EXPECT_NE(ran_on, std::this_thread::get_id());
  EXPECT_EQ(resumed_on, std::this_thread::get_id());
}

TEST_F(DbWorkersTest, AFailedBatchFailsEachOfItsWritesAndTheNextBatchRuns) {
  Start(Options());
  batch_gate_.Shut();
  SubmitWrite(1);
  ASSERT_TRUE(batches_entered_.WaitFor(1));
  SubmitWrite(2);
  SubmitWrite(-3);
  batch_gate_.Open();
  EXPECT_TRUE(writes_.Wait(1).ok());
  for (int id : {2, -3}) {
    Result<int> failed = writes_.Wait(id);
    ASSERT_FALSE(failed.ok());
    EXPECT_EQ(failed.error().kind, ErrorKind::kStorage);
    EXPECT_THAT(failed.error().message, HasSubstr("database write failed: disk on fire"));
  }
  SubmitWrite(4);
  EXPECT_TRUE(writes_.Wait(4).ok());
}

TEST_F(DbWorkersTest, AThrowingReadIsInternal) {
  Start(Options());
  auto throws = [](FakeReader&, Deadline) -> Status { throw std::runtime_error("bug"); };
  Status status = RunSync(workers_->Read<Status>(throws));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().kind, ErrorKind::kInternal);
}

TEST_F(DbWorkersTest, CloseCommitsEverythingQueuedThenRefuses) {
  Start(Options());
  batch_gate_.Shut();
  SubmitWrite(1);
  ASSERT_TRUE(batches_entered_.WaitFor(1));
  SubmitWrite(2);
  SubmitWrite(3);
  std::thread closer([this] { workers_->Close(); });
  batch_gate_.Open();
  closer.join();
  for (int id = 1; id <= 3; ++id) EXPECT_TRUE(writes_.Wait(id).ok());
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(1), ElementsAre(2, 3)));

  SubmitWrite(4);
  ASSERT_TRUE(writes_.Has(4));
  EXPECT_EQ(writes_.Wait(4).error().kind, ErrorKind::kStorage);
  EXPECT_THAT(writes_.Wait(4).error().message, HasSubstr("closed"));
  Status read = RunSync(workers_->Read<Status>([](FakeReader&, Deadline) { return Ok(); }));
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.error().kind, ErrorKind::kStorage);
  workers_->Close();  // idempotent
}

// ---- write health ----------------------------------------------------------------------------

// Workers whose batches and probes fail while `broken` is set, counting the probes.
class WriteHealthTest : public ::testing::Test {
 protected:
  void Start(std::chrono::milliseconds probe_interval) {
    StoreThreadOptions options;
    options.operation_timeout = std::chrono::minutes(5);
    options.write_probe_interval = probe_interval;
    options.first_write_retry = std::chrono::milliseconds(1);
    options.max_write_retry = std::chrono::milliseconds(5);
    std::vector<std::unique_ptr<FakeReader>> readers;
    readers.push_back(std::make_unique<FakeReader>());
    auto run_batch = [this](FakeWriter&, std::span<int* const>, Deadline) { return Outcome(); };
    auto probe = [this](FakeWriter&, Deadline) {
      probes_.fetch_add(1);
      return Outcome();
    };
    workers_ =
        std::make_unique<Workers>("Fake", options, std::make_unique<FakeWriter>(),
                                  std::move(readers), std::move(run_batch), std::move(probe));
    ASSERT_TRUE(workers_->Start().ok());
  }
  void TearDown() override {
    if (workers_) workers_->Close();
  }

  Status Outcome() const {
    if (broken_.load()) return MakeError(ErrorKind::kInternal, "disk on fire");
    return Ok();
  }

  Status Write() {
    auto result = std::make_shared<std::promise<Status>>();
    auto finish = [](const Status& committed, int&) { return committed; };
    workers_->SubmitWrite<Status>(
        1, finish, [result](Status status) { result->set_value(std::move(status)); });
    return result->get_future().get();
  }

  Status CheckWrites() {
    auto result = std::make_shared<std::promise<Status>>();
    workers_->SubmitCheckWrites([result](Status status) { result->set_value(std::move(status)); });
    return result->get_future().get();
  }

  static bool Eventually(const std::function<bool()>& condition) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!condition()) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }

  std::atomic<bool> broken_{false};
  std::atomic<int> probes_{0};
  std::unique_ptr<Workers> workers_;
};

TEST_F(WriteHealthTest, AFailedBatchIsReportedUntilTheWritersOwnRetrySucceeds) {
  Start(std::chrono::hours(1));
  EXPECT_TRUE(workers_->WriteHealth().ok());
  broken_ = true;
  ASSERT_FALSE(Write().ok());
  Status health = workers_->WriteHealth();
  ASSERT_FALSE(health.ok());
  EXPECT_EQ(health.error().kind, ErrorKind::kStorage);
  EXPECT_EQ(health.error().message, "write failing: disk on fire");
  // Nobody writes: the writer retries by itself, and keeps reporting the failure meanwhile.
  ASSERT_TRUE(Eventually([&] { return probes_.load() >= 3; }));
  EXPECT_FALSE(workers_->WriteHealth().ok());

  broken_ = false;
  EXPECT_TRUE(Eventually([&] { return workers_->WriteHealth().ok(); }));
  const int probes = probes_.load();
  // Healthy again: no more probes of its own (a generous margin of writes instead of a sleep).
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Write().ok());
  EXPECT_EQ(probes_.load(), probes);
}

TEST_F(WriteHealthTest, CheckWritesProbesOnlyWhenTheLastOutcomeIsOld) {
  Start(std::chrono::hours(1));
  EXPECT_TRUE(CheckWrites().ok());
  EXPECT_EQ(probes_.load(), 1);  // no outcome yet: probed
  broken_ = true;
  EXPECT_TRUE(CheckWrites().ok());  // within the interval: the probe's outcome stands
  EXPECT_EQ(probes_.load(), 1);
  ASSERT_FALSE(Write().ok());
  Status checked = CheckWrites();
  EXPECT_FALSE(checked.ok());  // a failed batch is news at once
  EXPECT_EQ(checked.error().message, "write failing: disk on fire");
}

TEST_F(WriteHealthTest, CheckWritesProbesWhenTheLastOutcomeIsOlderThanTheInterval) {
  Start(std::chrono::milliseconds(1));
  ASSERT_TRUE(Write().ok());
  broken_ = true;
  EXPECT_TRUE(Eventually([&] { return !CheckWrites().ok(); }));
  EXPECT_GE(probes_.load(), 1);
}

}  // namespace
}  // namespace staple::store
