#pragma once

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "http/message.h"

namespace staple::testing {

// An http::BodyWriter that keeps what was written; it can play a client that goes away after a
// number of writes, and call a hook before each write (to see what had happened by then).
class CapturingBodyWriter final : public http::BodyWriter {
 public:
  std::size_t fail_after = std::numeric_limits<std::size_t>::max();  // writes that succeed
  std::function<void(const std::string& data)> before_write;
  std::vector<std::string> writes;

  std::string all() const {
    std::string out;
    for (const auto& w : writes) out += w;
    return out;
  }

  net::awaitable<Status> Write(std::string data) override {
    if (before_write) before_write(data);
    if (writes.size() >= fail_after) {
      co_return MakeError(ErrorKind::kCancelled, "the client went away");
    }
    writes.push_back(std::move(data));
    co_return Ok();
  }
};

}  // namespace staple::testing
