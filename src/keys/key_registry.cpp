#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>

#include "common/await.h"
#include "keys/keys.h"
#include "observe/log.h"

namespace staple::keys {
namespace {

using KeyMap = std::unordered_map<std::string, std::shared_ptr<const Key>>;  // by secret_hash

std::int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct KeyRegistry::State {
  State(std::unique_ptr<KeyStore> key_store, std::chrono::milliseconds poll_every)
      : store(std::move(key_store)), poll(poll_every), timer(io) {}

  // Constant after construction. The store is used by the worker thread only once it runs
  // (before Start and after Stop, by the thread that calls them).
  std::unique_ptr<KeyStore> store;
  const std::chrono::milliseconds poll;
  net::io_context io;
  net::steady_timer timer;
  std::thread thread;

  // Worker thread only.
  std::optional<net::executor_work_guard<net::io_context::executor_type>> keep_running;
  std::int64_t loaded_version = -1;
  bool stopping = false;

  // Guarded by lifecycle_mu: whether management calls may still be posted to the worker. Posting
  // happens under this mutex, so every call posted before Stop() runs before the worker ends.
  std::mutex lifecycle_mu;
  bool running = false;
  bool stopped = false;

  // Guarded by keys_mu: the current snapshot, replaced whole on every reload.
  mutable std::mutex keys_mu;
  std::shared_ptr<const KeyMap> keys = std::make_shared<KeyMap>();

  // Guarded by usage_mu: usage counted since the last flush, by (key id, day).
  std::mutex usage_mu;
  std::map<std::pair<std::string, std::string>, UsageDay> pending;

  // Reads the version, then every key, and swaps the snapshot. The version is read first: a
  // change committed between the two reads is already in the list and only causes one more
  // reload at the next poll.
  Status Reload() {
    auto version = store->Version();
    if (!version) return version.error();
    auto records = store->List();
    if (!records) return records.error();
    auto fresh = std::make_shared<KeyMap>();
    for (KeyRecord& record : *records) {
      const std::string id = record.id;
      auto key = MakeKey(std::move(record));
      if (!key) {
        // Only a row edited by hand can get here: such a key authenticates nobody.
        observe::Warn("key ignored: its stored limits are invalid",
                      {{"key_id", id}, {"error", key.error().message}});
        continue;
      }
      auto shared = std::make_shared<const Key>(std::move(key).value());
      fresh->emplace(shared->record.secret_hash, std::move(shared));
    }
    {
      std::lock_guard lock(keys_mu);
      keys = std::move(fresh);
    }
    loaded_version = *version;
    return Ok();
  }

  // Writes the pending usage; what cannot be written goes back to be retried at the next flush.
  void Flush() {
    std::map<std::pair<std::string, std::string>, UsageDay> batch;
    {
      std::lock_guard lock(usage_mu);
      batch.swap(pending);
    }
    std::optional<Error> failure;
    for (auto it = batch.begin(); it != batch.end();) {
      Status added = failure ? Status(*failure) : store->AddUsage(it->first.first, it->second);
      if (added) {
        it = batch.erase(it);
      } else {
        if (!failure) failure = added.error();
        ++it;
      }
    }
    if (!failure) return;
    observe::Warn("cannot record key usage; retrying", {{"error", failure->message}});
    std::lock_guard lock(usage_mu);
    for (auto& [slot, usage] : batch) {
      UsageDay& total = pending[slot];
      total.day = usage.day;
      total.requests += usage.requests;
      total.prompt_tokens += usage.prompt_tokens;
      total.completion_tokens += usage.completion_tokens;
    }
  }

  void PollOnce() {
    try {
      auto version = store->Version();
      if (!version) {
        observe::Warn("cannot poll the key store; retrying", {{"error", version.error().message}});
      } else if (*version != loaded_version) {
        if (auto reloaded = Reload(); !reloaded) {
          observe::Warn("cannot reload the keys; retrying", {{"error", reloaded.error().message}});
        }
      }
      Flush();
    } catch (const std::exception& e) {
      observe::Warn("key store poll failed; retrying", {{"error", e.what()}});
    }
  }

  void SchedulePoll() {
    timer.expires_after(poll);
    timer.async_wait([this](const boost::system::error_code& ec) {
      if (ec || stopping) return;
      PollOnce();
      SchedulePoll();
    });
  }

  // After a change made here: this replica sees it at once. A failure leaves the old version
  // loaded, so the next poll tries again.
  void ReloadAfterChange() {
    if (auto reloaded = Reload(); !reloaded) {
      observe::Warn("cannot reload the keys; retrying", {{"error", reloaded.error().message}});
    }
  }

  // Runs `work` (returning T, a Result) on the worker thread and resumes the caller on its own
  // executor with the value.
  template <typename T, typename Work>
  net::awaitable<T> OnWorker(Work work) {
    auto start = [this, work = std::move(work)](auto done) mutable {
      std::unique_lock lock(lifecycle_mu);
      if (!running) {
        lock.unlock();
        done(T(MakeError(ErrorKind::kUnavailable, "the key registry is not running")));
        return;
      }
      net::post(io, [work = std::move(work), done]() mutable {
        std::optional<T> result;
        try {
          result.emplace(work());
        } catch (const std::exception& e) {
          result.emplace(MakeError(ErrorKind::kInternal, e.what()));
        }
        done(std::move(*result));
      });
    };
    return AwaitCallback<T>(std::move(start));
  }
};

KeyRegistry::KeyRegistry(std::unique_ptr<KeyStore> store, std::chrono::milliseconds poll)
    : state_(std::make_unique<State>(std::move(store), poll)) {}

KeyRegistry::~KeyRegistry() { Stop(); }

Status KeyRegistry::Start() {
  std::lock_guard lock(state_->lifecycle_mu);
  if (state_->stopped) return MakeError(ErrorKind::kInternal, "the key registry was stopped");
  if (state_->running) return Ok();
  if (auto loaded = state_->Reload(); !loaded) return loaded;
  State* state = state_.get();
  state->keep_running.emplace(state->io.get_executor());
  state->SchedulePoll();
  state->running = true;
  state->thread = std::thread([state] { state->io.run(); });
  return Ok();
}

void KeyRegistry::Stop() {
  State* state = state_.get();
  {
    std::lock_guard lock(state->lifecycle_mu);
    if (state->stopped) return;
    state->stopped = true;
    if (state->running) {
      state->running = false;
      net::post(state->io, [state] {
        state->stopping = true;
        state->timer.cancel();
        state->keep_running.reset();
      });
    }
  }
  if (state->thread.joinable()) state->thread.join();
  // The worker is gone: the store is this thread's now.
  try {
    state->Flush();
  } catch (const std::exception& e) {
    observe::Warn("cannot record key usage at shutdown", {{"error", e.what()}});
  }
}

KeyRegistry::Authenticated KeyRegistry::Authenticate(std::string_view secret,
                                                     std::int64_t now) const {
  const std::string hash = HashSecret(secret);
  std::shared_ptr<const KeyMap> keys;
  {
    std::lock_guard lock(state_->keys_mu);
    keys = state_->keys;
  }
  Authenticated answer;
  const auto found = keys->find(hash);
  if (found == keys->end() || !SameHash(found->second->record.secret_hash, hash)) return answer;
  answer.key = found->second;
  const KeyRecord& record = answer.key->record;
  if (record.revoked) {
    answer.verdict = Verdict::kRevoked;
  } else if (record.expires_at && *record.expires_at <= now) {
    answer.verdict = Verdict::kExpired;
  } else {
    answer.verdict = Verdict::kValid;
  }
  return answer;
}

void KeyRegistry::Record(const std::string& key_id, std::int64_t requests,
                         std::int64_t prompt_tokens, std::int64_t completion_tokens) {
  std::string day = UtcDay(NowSeconds());
  std::lock_guard lock(state_->usage_mu);
  UsageDay& usage = state_->pending[{key_id, day}];
  usage.day = std::move(day);
  usage.requests += requests;
  usage.prompt_tokens += prompt_tokens;
  usage.completion_tokens += completion_tokens;
}

net::awaitable<Result<KeyRegistry::Created>> KeyRegistry::Create(KeyRecord record) {
  State* state = state_.get();
  auto work = [state, record = std::move(record)]() mutable -> Result<Created> {
    Created created;
    created.secret = GenerateSecret();
    record.id = GenerateId();
    record.secret_hash = HashSecret(created.secret);
    record.created_at = NowSeconds();
    if (auto valid = Validate(record); !valid) return valid.error();
    if (auto stored = state->store->Create(record); !stored) return stored.error();
    state->ReloadAfterChange();
    created.record = std::move(record);
    return created;
  };
  return state->OnWorker<Result<Created>>(std::move(work));
}

net::awaitable<Result<std::vector<KeyRecord>>> KeyRegistry::List() {
  State* state = state_.get();
  auto work = [state] { return state->store->List(); };
  return state->OnWorker<Result<std::vector<KeyRecord>>>(std::move(work));
}

net::awaitable<Result<KeyRecord>> KeyRegistry::Get(std::string id) {
  State* state = state_.get();
  auto work = [state, id = std::move(id)] { return state->store->Get(id); };
  return state->OnWorker<Result<KeyRecord>>(std::move(work));
}

net::awaitable<Result<KeyRecord>> KeyRegistry::Update(KeyRecord record) {
  State* state = state_.get();
  auto work = [state, record = std::move(record)]() mutable -> Result<KeyRecord> {
    if (auto valid = Validate(record); !valid) return valid.error();
    auto stored = state->store->Get(record.id);
    if (!stored) return stored.error();
    record.secret_hash = stored->secret_hash;
    record.created_at = stored->created_at;
    if (auto updated = state->store->Update(record); !updated) return updated.error();
    state->ReloadAfterChange();
    return record;
  };
  return state->OnWorker<Result<KeyRecord>>(std::move(work));
}

net::awaitable<Status> KeyRegistry::Revoke(std::string id) {
  State* state = state_.get();
  auto work = [state, id = std::move(id)]() -> Status {
    if (auto revoked = state->store->Revoke(id); !revoked) return revoked;
    state->ReloadAfterChange();
    return Ok();
  };
  return state->OnWorker<Status>(std::move(work));
}

net::awaitable<Result<std::vector<UsageDay>>> KeyRegistry::Usage(std::string id, int days) {
  State* state = state_.get();
  auto work = [state, id = std::move(id), days] { return state->store->Usage(id, days); };
  return state->OnWorker<Result<std::vector<UsageDay>>>(std::move(work));
}

}  // namespace staple::keys
