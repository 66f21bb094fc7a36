#pragma once

#include <memory>
#include <utility>

#include "common/net.h"

namespace staple {

// Suspends the calling coroutine until `start` invokes the callback it is given (exactly once, on
// any thread), then resumes the coroutine on its own executor with the callback's value.
//
// `start` has the signature `void(Callback)` where `Callback` is copyable and callable as
// `void(T)`. The coroutine's executor counts as busy while the callback is pending, so an
// io_context does not run out of work while a back-end thread still holds the callback.
// This is how blocking back ends (SQLite threads, libpq, hiredis) hand results to I/O threads.
template <typename T, typename Start>
net::awaitable<T> AwaitCallback(Start start) {
  return net::async_initiate<const net::use_awaitable_t<>&, void(T)>(
      [start = std::move(start)](auto handler) mutable {
        using Handler = decltype(handler);
        auto executor = net::prefer(net::get_associated_executor(handler),
                                    net::execution::outstanding_work.tracked);
        auto shared = std::make_shared<Handler>(std::move(handler));
        start([shared, executor](T value) {
          net::post(executor,
                    [shared, value = std::move(value)]() mutable { (*shared)(std::move(value)); });
        });
      },
      net::use_awaitable);
}

}  // namespace staple
