#pragma once

#include <string>
#include <vector>

#include "chat/token_gate.h"

namespace staple::testing {

// A TokenGate that records its calls ("reserve", "settle", "release") and can refuse.
class RecordingTokenGate final : public chat::TokenGate {
 public:
  bool refuse = false;  // Reserve fails with kLimited
  std::vector<std::string> calls;
  chat::TokenEstimate reserved;  // what Reserve was given
  chat::TokenUsage settled;      // what Settle was given

  net::awaitable<Status> Reserve(chat::TokenEstimate estimate) override {
    calls.push_back("reserve");
    reserved = estimate;
    if (refuse) co_return MakeError(ErrorKind::kLimited, "token limit exceeded");
    co_return Ok();
  }
  net::awaitable<void> Settle(chat::TokenUsage usage) override {
    calls.push_back("settle");
    settled = usage;
    co_return;
  }
  net::awaitable<void> Release() override {
    calls.push_back("release");
    co_return;
  }
};

}  // namespace staple::testing
