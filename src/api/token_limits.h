#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/admission.h"
#include "chat/token_gate.h"
#include "http/message.h"
#include "observe/metrics.h"
#include "ratelimit/rate_limiter.h"

namespace staple::api {

struct TokenLimitSettings {
  std::vector<ratelimit::RateLimitItem> limits;  // tokens per client, shared by all chat routes
  // Completion tokens reserved for a request that sets no max_completion_tokens/max_tokens.
  std::uint64_t completion_reserve = 1024;
  bool fail_open = false;  // limiter storage failure: admit (true) or 503
};

class TokenTicket;

// Per-client token limits (STAPLE_TOKEN_LIMITS). Each chat request gets a TokenTicket, which the
// conversation service or the proxy drives: before the upstream is asked, the ticket reserves the
// request's estimated cost (prompt estimate plus its max tokens, or the configured reserve) with
// an all-or-nothing Acquire, so concurrent requests can never take more than the limit between
// them; when the answer completes, the reservation is replaced by the upstream's reported usage
// (Refund of what was not used, Charge of what was used beyond it). Thread-safe.
class TokenLimits {
 public:
  // `usage` (null without client keys) receives each keyed request's token usage.
  TokenLimits(ratelimit::RateLimiter& limiter, observe::Metrics& metrics,
              TokenLimitSettings settings, keys::KeyRegistry* usage = nullptr);

  bool enabled() const { return !settings_.limits.empty(); }

  // A ticket for the admitted request, counted for its identity (the key, or the address without
  // client keys) against the configured limits and the key's own; null (and no work done) when
  // there is neither a limit nor a key. With a key but no limit, the ticket only records usage.
  std::shared_ptr<TokenTicket> Ticket(const Admission::Outcome& admitted, ErrorStyle style) const;

 private:
  friend class TokenTicket;
  // Constant after construction.
  ratelimit::RateLimiter& limiter_;
  observe::Metrics& metrics_;
  const TokenLimitSettings settings_;
  keys::KeyRegistry* usage_;
};

// The token accounting of one request (see chat::TokenGate for the order of calls). Not
// thread-safe: used by the coroutine of its request only.
class TokenTicket final : public chat::TokenGate {
 public:
  TokenTicket(const TokenLimits& limits, const Admission::Outcome& admitted, ErrorStyle style);

  bool NeedsEstimate() const override { return !checks_.empty(); }
  net::awaitable<Status> Reserve(chat::TokenEstimate estimate) override;
  net::awaitable<void> Settle(chat::TokenUsage usage) override;
  net::awaitable<void> Release() override;

  // After Reserve failed: the 429 (tokens) or 503 (limiter unavailable) answer to send.
  http::Response TakeRejection() { return std::move(rejection_); }
  // X-RateLimit-Limit-Tokens, -Remaining-Tokens and -Reset-Tokens after Reserve, for the answer.
  const http::Headers& headers() const { return headers_; }
  // Tokens currently held: the reservation, or after Settle the usage.
  std::uint64_t held() const { return held_; }

 private:
  // Gives back (delta < 0) or charges (delta > 0) the difference to what is held; a storage
  // failure is logged and counted.
  net::awaitable<void> Adjust(std::int64_t delta);

  const TokenLimits& limits_;
  const ErrorStyle style_;
  std::string key_id_;  // whose usage Settle records ("" without a key)
  std::vector<ratelimit::Check> checks_;
  std::uint64_t prompt_estimate_ = 0;
  std::uint64_t held_ = 0;
  double acquired_at_ = 0;  // Decision::at of the reservation
  bool accounted_ = false;  // Reserve succeeded against the storage; cleared once settled
  http::Response rejection_;
  http::Headers headers_;
};

}  // namespace staple::api
