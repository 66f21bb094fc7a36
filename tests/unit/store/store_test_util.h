#pragma once

#include <stdlib.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "store/conversation_store.h"

namespace staple::store::testing {

// The contents of `messages`, in order: of rows (a page of ListMessages) or of shared rows (a
// RecentMessages history).
inline std::vector<std::string> Contents(const std::vector<StoredMessage>& messages) {
  std::vector<std::string> contents;
  for (const StoredMessage& message : messages) contents.push_back(message.content);
  return contents;
}
inline std::vector<std::string> Contents(const std::vector<HistoryMessage>& messages) {
  std::vector<std::string> contents;
  for (const HistoryMessage& message : messages) contents.push_back(message.content);
  return contents;
}
inline std::vector<std::string> Contents(const History& messages) {
  std::vector<std::string> contents;
  for (const auto& message : messages) contents.push_back(message->content);
  return contents;
}

// A fresh directory under the system temp directory, removed with everything in it on
// destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "staple-store-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }

  const std::filesystem::path& path() const { return path_; }
  std::string File(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

template <typename T>
net::awaitable<void> StoreResultIn(net::awaitable<T> operation, std::optional<T>* out) {
  out->emplace(co_await std::move(operation));
}

// Runs one store operation to completion on a local io_context and returns its result. The
// store's threads resume the coroutine on this io_context, which keeps running while the
// operation is pending.
template <typename T>
T RunSync(net::awaitable<T> operation) {
  net::io_context io;
  std::optional<T> out;
  net::co_spawn(io, StoreResultIn(std::move(operation), &out), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  io.run();
  if (!out) throw std::logic_error("store operation did not complete");
  return std::move(*out);
}

// The message of a failed result, or "ok", for assertion output.
template <typename R>
std::string Describe(const R& result) {
  if (result.ok()) return "ok";
  return std::string(ErrorKindName(result.error().kind)) + ": " + result.error().message;
}

// A turn with recognisable content: "prompt <n>" / "answer <n>" for `user_id`.
inline Turn MakeTurn(const std::string& user_id, int n) {
  Turn turn;
  turn.user_id = user_id;
  turn.request_id = "req-" + user_id + "-" + std::to_string(n);
  turn.model = "test-model";
  turn.prompt = "prompt " + std::to_string(n);
  turn.completion = "answer " + std::to_string(n);
  turn.prompt_time = std::chrono::system_clock::now();
  turn.completion_time = turn.prompt_time + std::chrono::milliseconds(250);
  turn.prompt_tokens = 10 + n;
  turn.completion_tokens = 20 + n;
  turn.latency_ms = 250;
  return turn;
}

}  // namespace staple::store::testing
