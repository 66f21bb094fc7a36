#include "api/token_limits.h"

#include <cmath>
#include <limits>

#include "api/errors.h"
#include "observe/log.h"

namespace staple::api {
namespace {

constexpr std::uint64_t kMaxToken = std::numeric_limits<std::int64_t>::max();

std::uint64_t Add(std::uint64_t a, std::uint64_t b) {
  return a > kMaxToken - std::min(b, kMaxToken) ? kMaxToken : a + b;
}

std::uint64_t Reported(const std::optional<std::int64_t>& value) {
  return value && *value > 0 ? static_cast<std::uint64_t>(*value) : 0;
}

}  // namespace

TokenLimits::TokenLimits(ratelimit::RateLimiter& limiter, observe::Metrics& metrics,
                         TokenLimitSettings settings, keys::KeyRegistry* usage)
    : limiter_(limiter), metrics_(metrics), settings_(std::move(settings)), usage_(usage) {}

std::shared_ptr<TokenTicket> TokenLimits::Ticket(const Admission::Outcome& admitted,
                                                 ErrorStyle style) const {
  if (!enabled() && !admitted.key) return nullptr;
  return std::make_shared<TokenTicket>(*this, admitted, style);
}

TokenTicket::TokenTicket(const TokenLimits& limits, const Admission::Outcome& admitted,
                         ErrorStyle style)
    : limits_(limits), style_(style) {
  const std::string identity = admitted.identity();
  const auto* own = admitted.key ? &admitted.key->token_limits : nullptr;
  checks_.reserve(limits.settings_.limits.size() + (own != nullptr ? own->size() : 0));
  for (const auto& item : limits.settings_.limits) checks_.push_back({item, "tokens:" + identity});
  if (own != nullptr) {
    for (const auto& item : *own) checks_.push_back({item, "keytokens:" + identity});
  }
  if (admitted.key && limits.usage_ != nullptr) key_id_ = admitted.key->record.id;
}

net::awaitable<Status> TokenTicket::Reserve(chat::TokenEstimate estimate) {
  if (checks_.empty()) co_return Ok();  // only usage is recorded
  const auto& settings = limits_.settings_;
  prompt_estimate_ = estimate.prompt;
  const std::uint64_t cost =
      Add(estimate.prompt, estimate.max_completion.value_or(settings.completion_reserve));
  auto asked = checks_;  // a named argument: see the co_await note in docs/STYLE.md
  auto decision = co_await limits_.limiter_.Acquire(std::move(asked), cost);
  if (!decision) {
    limits_.metrics_.CountLimiterError();
    observe::Warn(
        "rate limiter unavailable for token limits",
        {{"error", decision.error().message}, {"policy", settings.fail_open ? "open" : "closed"}});
    if (settings.fail_open) co_return Ok();  // admitted without accounting
    rejection_ = LimiterUnavailable(style_);
    co_return MakeError(ErrorKind::kLimited, "rate limiting is unavailable");
  }
  limits_.metrics_.CountTokenDecision(decision->allowed);
  const auto& state = decision->state;
  headers_.Add("X-RateLimit-Limit-Tokens", std::to_string(state.limit));
  headers_.Add("X-RateLimit-Remaining-Tokens", std::to_string(state.remaining));
  headers_.Add("X-RateLimit-Reset-Tokens",
               std::to_string(static_cast<std::int64_t>(std::ceil(state.reset_at))));
  if (decision->allowed) {
    held_ = cost;
    acquired_at_ = decision->at;
    accounted_ = true;
    co_return Ok();
  }

  const auto limit_text = checks_[decision->deciding].item.ToString();
  std::string detail = "requested " + std::to_string(cost) + " tokens, " +
                       std::to_string(state.remaining) + " remaining";
  if (cost > state.limit) detail += "; the request alone exceeds the limit";
  rejection_ = LimitExceeded(style_, "token limit " + limit_text + " (" + detail + ")",
                             "Rate limit exceeded on tokens: " + limit_text + " (" + detail + ")",
                             "tokens", headers_, decision->retry_after);
  co_return MakeError(ErrorKind::kLimited, "token limit exceeded");
}

net::awaitable<void> TokenTicket::Settle(chat::TokenUsage usage) {
  // Reported counts replace the estimates; what is not reported is estimated (a stream whose
  // client did not ask for usage reports none).
  const std::uint64_t one_prompt =
      usage.prompt_tokens ? Reported(usage.prompt_tokens) : prompt_estimate_;
  const std::uint64_t prompt = std::min(one_prompt * (1 + usage.abandoned_attempts), kMaxToken);
  const std::uint64_t completion =
      usage.completion_tokens ? Reported(usage.completion_tokens) : (usage.answer_bytes + 3) / 4;
  if (!key_id_.empty()) {
    limits_.usage_->Record(key_id_, 0, static_cast<std::int64_t>(std::min(prompt, kMaxToken)),
                           static_cast<std::int64_t>(std::min(completion, kMaxToken)));
  }
  if (!accounted_) co_return;
  const std::uint64_t used = Add(prompt, completion);
  const auto delta = static_cast<std::int64_t>(used) - static_cast<std::int64_t>(held_);
  co_await Adjust(delta);
  held_ = used;
  accounted_ = false;
}

net::awaitable<void> TokenTicket::Release() {
  if (!accounted_) co_return;
  co_await Adjust(-static_cast<std::int64_t>(held_));
  held_ = 0;
  accounted_ = false;
}

net::awaitable<void> TokenTicket::Adjust(std::int64_t delta) {
  if (delta == 0) co_return;
  auto checks = checks_;
  Status done = Ok();
  if (delta < 0) {
    const auto amount = static_cast<std::uint64_t>(-delta);
    done = co_await limits_.limiter_.Refund(std::move(checks), amount, acquired_at_);
  } else {
    done = co_await limits_.limiter_.Charge(std::move(checks), static_cast<std::uint64_t>(delta));
  }
  if (!done) {
    limits_.metrics_.CountLimiterError();
    observe::Warn("token usage not reconciled",
                  {{"error", done.error().message}, {"tokens", std::to_string(delta)}});
  }
}

}  // namespace staple::api
