#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "common/net.h"
#include "common/result.h"

namespace staple::upstream {

// How a call ends when its client shut down or its Cancellation fired.
inline Error ShutDownError() {
  return MakeError(ErrorKind::kCancelled, "the upstream client shut down");
}

// One exchange of an upstream client in flight, cancellable from its own io_context's thread.
class CancellableCall {
 public:
  virtual ~CancellableCall() = default;
  // Ends the exchange with kCancelled as soon as it can. Runs on the call's executor.
  virtual void Cancel() = 0;
};

// The calls of one client in flight, so that Shutdown() reaches them from any thread: each is
// registered with the executor that runs it, and ShutDown() posts its Cancel() there. Shared by
// CurlClient and AsioClient. Thread-safe.
class CallRegistry {
 public:
  // Registers `call` (which unregisters itself with Remove() when destroyed). Returns false when
  // the client has shut down already: the caller cancels the call at once. Checked after
  // registering, so a concurrent ShutDown() either sees the call or set the flag first.
  bool Add(const std::shared_ptr<CancellableCall>& call, net::any_io_executor executor) {
    {
      std::lock_guard lock(mutex_);
      calls_.emplace(call.get(), Entry{std::move(executor), call});
    }
    return !shut_down_.load();
  }

  void Remove(const CancellableCall* call) {
    std::lock_guard lock(mutex_);
    calls_.erase(call);
  }

  // Every call registered now or later is cancelled.
  void ShutDown() {
    shut_down_.store(true);
    std::lock_guard lock(mutex_);
    for (const auto& [key, entry] : calls_) {
      net::post(entry.executor, [call = entry.call] {
        if (auto alive = call.lock()) alive->Cancel();
      });
    }
  }

 private:
  struct Entry {
    net::any_io_executor executor;
    std::weak_ptr<CancellableCall> call;
  };

  std::atomic<bool> shut_down_{false};
  std::mutex mutex_;
  std::unordered_map<const CancellableCall*, Entry> calls_;  // guarded by mutex_
};

}  // namespace staple::upstream
