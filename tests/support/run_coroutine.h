#pragma once

#include <exception>
#include <memory>
#include <optional>
#include <utility>

#include "common/net.h"

// Driving coroutines by hand in unit tests: start one on an io_context, run what is ready, read
// its result. No threads, no sleeps: a test sees exactly where each coroutine waits.
namespace staple::testing {

template <typename T>
net::awaitable<void> KeepResult(std::shared_ptr<std::optional<T>> out, net::awaitable<T> task) {
  T value = co_await std::move(task);
  out->emplace(std::move(value));
}

// Starts `task` on `io`; its result appears in the returned slot once it completed.
template <typename T>
std::shared_ptr<std::optional<T>> Start(net::io_context& io, net::awaitable<T> task) {
  auto out = std::make_shared<std::optional<T>>();
  net::co_spawn(io, KeepResult(out, std::move(task)), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  return out;
}

// Runs what is ready until everything waits on something outside (a stall).
inline void Settle(net::io_context& io) {
  io.restart();
  while (io.poll() > 0) {
  }
}

}  // namespace staple::testing
