#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <thread>

#include "key_store_contract.h"
#include "keys/keys.h"
#include "support/temp_dir.h"

namespace staple::keys {
namespace {

using testing::Describe;
using testing::NewRecord;
using Verdict = KeyRegistry::Verdict;
using namespace std::chrono_literals;

constexpr std::int64_t kNow = 1750000000;

// Runs one awaitable on a private io_context in this thread and returns its value, with the id of
// the thread the coroutine resumed on.
template <typename T>
T RunSync(net::awaitable<T> operation, std::thread::id* resumed_on = nullptr) {
  net::io_context io;
  std::optional<T> out;
  auto wrapper = [](net::awaitable<T> op, std::optional<T>* result,
                    std::thread::id* thread) -> net::awaitable<void> {
    T value = co_await std::move(op);
    if (thread != nullptr) *thread = std::this_thread::get_id();
    result->emplace(std::move(value));
  };
  net::co_spawn(io, wrapper(std::move(operation), &out, resumed_on), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  io.run();
  if (!out) throw std::logic_error("operation did not complete");
  return std::move(*out);
}

// Waits for `condition` with a generous deadline; true when it held in time.
bool WaitFor(const std::function<bool()>& condition) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return condition();
}

class KeyRegistryTest : public ::testing::Test {
 protected:
  std::unique_ptr<KeyStore> OpenStore() {
    auto store = OpenKeyStore("sqlite:///" + path_, path_);
    EXPECT_TRUE(store.ok()) << Describe(store);
    return store.ok() ? std::move(store).value() : nullptr;
  }

  // A key with a known secret, stored through `store`.
  std::string AddKey(KeyStore& store, KeyRecord record) {
    const std::string secret = GenerateSecret();
    record.secret_hash = HashSecret(secret);
    EXPECT_TRUE(store.Create(record).ok());
    return secret;
  }

  ::staple::testing::TempDir dir_;
  std::string path_ = (dir_ / "instance" / "chat_history.db").string();
};

TEST_F(KeyRegistryTest, AuthenticatesValidUnknownExpiredAndRevokedKeys) {
  auto side = OpenStore();
  ASSERT_NE(side, nullptr);
  KeyRecord valid = NewRecord("valid");
  valid.expires_at = kNow + 1;
  const std::string valid_secret = AddKey(*side, valid);
  KeyRecord expired = NewRecord("expired");
  expired.expires_at = kNow;
  const std::string expired_secret = AddKey(*side, expired);
  const KeyRecord revoked_record = NewRecord("revoked");
  const std::string revoked_secret = AddKey(*side, revoked_record);
  ASSERT_TRUE(side->Revoke(revoked_record.id).ok());

  KeyRegistry registry(OpenStore(), 50ms);
  ASSERT_TRUE(registry.Start().ok());

  auto answer = registry.Authenticate(valid_secret, kNow);
  EXPECT_EQ(answer.verdict, Verdict::kValid);
  ASSERT_NE(answer.key, nullptr);
  EXPECT_EQ(answer.key->record.id, valid.id);
  EXPECT_EQ(registry.Authenticate(expired_secret, kNow).verdict, Verdict::kExpired);
  EXPECT_EQ(registry.Authenticate(expired_secret, kNow - 1).verdict, Verdict::kValid);
  auto revoked = registry.Authenticate(revoked_secret, kNow);
  EXPECT_EQ(revoked.verdict, Verdict::kRevoked);
  EXPECT_NE(revoked.key, nullptr);
  auto unknown = registry.Authenticate(GenerateSecret(), kNow);
  EXPECT_EQ(unknown.verdict, Verdict::kUnknown);
  EXPECT_EQ(unknown.key, nullptr);
  EXPECT_EQ(registry.Authenticate("", kNow).verdict, Verdict::kUnknown);
  EXPECT_EQ(registry.Authenticate(valid_secret + "x", kNow).verdict, Verdict::kUnknown);
  registry.Stop();
}

TEST_F(KeyRegistryTest, SeesChangesMadeByAnotherReplicaAfterAPoll) {
  auto side = OpenStore();
  ASSERT_NE(side, nullptr);
  KeyRegistry registry(OpenStore(), 50ms);
  ASSERT_TRUE(registry.Start().ok());

  KeyRecord record = NewRecord("late");
  const std::string secret = AddKey(*side, record);
  EXPECT_TRUE(WaitFor([&] {
    return registry.Authenticate(secret, kNow).verdict == Verdict::kValid;
  })) << "a key created elsewhere was not loaded";

  ASSERT_TRUE(side->Revoke(record.id).ok());
  EXPECT_TRUE(WaitFor([&] {
    return registry.Authenticate(secret, kNow).verdict == Verdict::kRevoked;
  })) << "a revocation made elsewhere was not loaded";
}

TEST_F(KeyRegistryTest, FlushesRecordedUsageToTheStore) {
  auto side = OpenStore();
  ASSERT_NE(side, nullptr);
  KeyRecord record = NewRecord("counted");
  AddKey(*side, record);
  KeyRegistry registry(OpenStore(), 50ms);
  ASSERT_TRUE(registry.Start().ok());

  registry.Record(record.id, 1, 10, 20);
  registry.Record(record.id, 1, 5, 5);
  EXPECT_TRUE(WaitFor([&] {
    auto usage = side->Usage(record.id, 30);
    return usage.ok() && usage->size() == 1 && (*usage)[0].requests == 2 &&
           (*usage)[0].prompt_tokens == 15 && (*usage)[0].completion_tokens == 25;
  })) << "recorded usage was not flushed";

  // What is recorded just before Stop() is flushed by it.
  registry.Record(record.id, 3, 0, 0);
  registry.Stop();
  auto usage = side->Usage(record.id, 30);
  ASSERT_TRUE(usage.ok()) << Describe(usage);
  ASSERT_EQ(usage->size(), 1u);
  EXPECT_EQ((*usage)[0].requests, 5);
  EXPECT_EQ((*usage)[0].day, UtcDay(std::chrono::duration_cast<std::chrono::seconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count()));
  registry.Stop();  // a second Stop is harmless
}

TEST_F(KeyRegistryTest, ManagementCallsRunOnTheRegistryAndTakeEffectAtOnce) {
  KeyRegistry registry(OpenStore(), 1h);  // no poll during the test: changes must reload at once
  ASSERT_TRUE(registry.Start().ok());

  KeyRecord wanted;
  wanted.name = "made here";
  wanted.allowed_models = {"llama3"};
  wanted.request_limits = "5 per minute";
  wanted.id = "ignored";
  std::thread::id resumed_on;
  auto created = RunSync(registry.Create(wanted), &resumed_on);
  EXPECT_EQ(resumed_on, std::this_thread::get_id());
  ASSERT_TRUE(created.ok()) << Describe(created);
  const KeyRecord& record = created->record;
  EXPECT_NE(record.id, "ignored");
  EXPECT_EQ(record.id.rfind("key_", 0), 0u);
  EXPECT_EQ(record.secret_hash, HashSecret(created->secret));
  EXPECT_GT(record.created_at, 0);
  const std::string secret = created->secret;
  auto answer = registry.Authenticate(secret, kNow);
  ASSERT_EQ(answer.verdict, Verdict::kValid);
  ASSERT_EQ(answer.key->request_limits.size(), 1u);
  EXPECT_TRUE(answer.key->AllowsModel("llama3"));
  EXPECT_FALSE(answer.key->AllowsModel("gpt-4o"));

  KeyRecord invalid;
  invalid.request_limits = "lots";
  auto refused = RunSync(registry.Create(invalid));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kInvalidArgument);

  KeyRecord change = record;
  change.name = "renamed";
  change.allowed_models.clear();
  change.request_limits = "";
  change.secret_hash = "tampered";
  change.created_at = 1;
  auto updated = RunSync(registry.Update(change));
  ASSERT_TRUE(updated.ok()) << Describe(updated);
  EXPECT_EQ(updated->secret_hash, record.secret_hash);
  EXPECT_EQ(updated->created_at, record.created_at);
  answer = registry.Authenticate(secret, kNow);
  ASSERT_EQ(answer.verdict, Verdict::kValid);
  EXPECT_EQ(answer.key->record.name, "renamed");
  EXPECT_TRUE(answer.key->request_limits.empty());
  EXPECT_TRUE(answer.key->AllowsModel("gpt-4o"));

  auto got = RunSync(registry.Get(record.id));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->name, "renamed");
  auto listed = RunSync(registry.List());
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 1u);
  EXPECT_EQ(RunSync(registry.Get("key_nope")).error().kind, ErrorKind::kNotFound);

  ASSERT_TRUE(RunSync(registry.Revoke(record.id)).ok());
  EXPECT_EQ(registry.Authenticate(secret, kNow).verdict, Verdict::kRevoked);
  EXPECT_EQ(RunSync(registry.Revoke("key_nope")).error().kind, ErrorKind::kNotFound);

  registry.Record(record.id, 1, 2, 3);
  registry.Stop();
  auto usage = OpenStore()->Usage(record.id, 30);
  ASSERT_TRUE(usage.ok());
  ASSERT_EQ(usage->size(), 1u);
  EXPECT_EQ((*usage)[0].completion_tokens, 3);

  // After Stop() the calls fail instead of waiting forever.
  auto late = RunSync(registry.List());
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().kind, ErrorKind::kUnavailable);
}

// A store that fails Version(), List() and AddUsage() while `failing` is set, like a database that
// went away; counts the failures.
class FlakyKeyStore final : public KeyStore {
 public:
  FlakyKeyStore(std::unique_ptr<KeyStore> inner, std::atomic<bool>& failing,
                std::atomic<int>& failures)
      : inner_(std::move(inner)), failing_(failing), failures_(failures) {}

  Status Create(const KeyRecord& record) override { return inner_->Create(record); }
  Result<std::vector<KeyRecord>> List() override {
    if (failing_) return Fail();
    return inner_->List();
  }
  Result<KeyRecord> Get(const std::string& id) override { return inner_->Get(id); }
  Status Update(const KeyRecord& record) override { return inner_->Update(record); }
  Status Revoke(const std::string& id) override { return inner_->Revoke(id); }
  Result<std::int64_t> Version() override {
    if (failing_) return Fail();
    return inner_->Version();
  }
  Status AddUsage(const std::string& id, const UsageDay& delta) override {
    if (failing_) return Fail();
    return inner_->AddUsage(id, delta);
  }
  Result<std::vector<UsageDay>> Usage(const std::string& id, int days) override {
    return inner_->Usage(id, days);
  }

 private:
  Error Fail() {
    ++failures_;
    return MakeError(ErrorKind::kStorage, "database is down");
  }

  std::unique_ptr<KeyStore> inner_;
  std::atomic<bool>& failing_;
  std::atomic<int>& failures_;
};

TEST_F(KeyRegistryTest, KeepsServingAndRetriesWhileTheStoreFails) {
  auto side = OpenStore();
  ASSERT_NE(side, nullptr);
  KeyRecord record = NewRecord("steady");
  const std::string secret = AddKey(*side, record);
  std::atomic<bool> failing{false};
  std::atomic<int> failures{0};
  KeyRegistry registry(std::make_unique<FlakyKeyStore>(OpenStore(), failing, failures), 50ms);
  ASSERT_TRUE(registry.Start().ok());

  failing = true;
  registry.Record(record.id, 1, 0, 0);
  const std::string late_secret = AddKey(*side, NewRecord("late"));
  // Several polls and flushes fail; the keys loaded before stay in force.
  ASSERT_TRUE(WaitFor([&] { return failures >= 6; }));
  EXPECT_EQ(registry.Authenticate(secret, kNow).verdict, Verdict::kValid);
  EXPECT_EQ(registry.Authenticate(late_secret, kNow).verdict, Verdict::kUnknown);
  auto nothing = side->Usage(record.id, 30);
  ASSERT_TRUE(nothing.ok());
  EXPECT_TRUE(nothing->empty());

  // Once the store answers again, the change is loaded and the held usage written.
  failing = false;
  EXPECT_TRUE(
      WaitFor([&] { return registry.Authenticate(late_secret, kNow).verdict == Verdict::kValid; }));
  EXPECT_TRUE(WaitFor([&] {
    auto usage = side->Usage(record.id, 30);
    return usage.ok() && usage->size() == 1 && (*usage)[0].requests == 1;
  }));
}

TEST_F(KeyRegistryTest, StartFailsWhenTheKeysCannotBeLoaded) {
  std::atomic<bool> failing{true};
  std::atomic<int> failures{0};
  KeyRegistry registry(std::make_unique<FlakyKeyStore>(OpenStore(), failing, failures), 50ms);
  const Status started = registry.Start();
  ASSERT_FALSE(started.ok());
  EXPECT_EQ(started.error().kind, ErrorKind::kStorage);
}

}  // namespace
}  // namespace staple::keys
