#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <vector>

#include "chat/context_window.h"
#include "common/net.h"
#include "common/result.h"

namespace staple::chat {

// What one upstream call is expected to cost, known once its request body is built.
struct TokenEstimate {
  std::uint64_t prompt = 0;  // estimated prompt tokens of the messages sent
  // The completion tokens the request allows itself (max_completion_tokens or max_tokens, times
  // n); std::nullopt when it sets no bound.
  std::optional<std::uint64_t> max_completion;
};

// What an answer cost, as far as it is known.
struct TokenUsage {
  std::optional<std::int64_t> prompt_tokens;      // the upstream's `usage`, when reported
  std::optional<std::int64_t> completion_tokens;  // the upstream's `usage`, when reported
  std::uint64_t answer_bytes = 0;                 // size of the answer's text
  // Other upstreams that were sent the same prompt and cancelled (the losers of a hedged
  // request): each is counted as having used the prompt.
  std::uint32_t abandoned_attempts = 0;
};

// Estimated tokens of a text: one per four bytes, rounded up. English averages about four
// characters per token; the estimate only has to be close, because the upstream's reported usage
// replaces it once the answer is complete.
std::uint64_t EstimateTextTokens(std::string_view text);

// Tokens that prime the reply, counted once per prompt.
inline constexpr std::uint64_t kReplyPrimingTokens = 3;
// Estimated tokens of one message of a prompt: its text plus 4 tokens of framing.
std::uint64_t EstimateMessageTokens(std::string_view text);
// The same for a message whose text is `text_bytes` long.
std::uint64_t EstimateMessageTokens(std::size_t text_bytes);

// Estimated prompt tokens of messages as the upstream counts them: each message's text plus 4
// tokens of framing, plus 3 that prime the reply.
std::uint64_t EstimatePromptTokens(const std::vector<ChatMessage>& messages);
// The same for a Chat Completions `messages` array (text parts only; other parts count 0), plus
// `extra` messages that are inserted into it.
std::uint64_t EstimatePromptTokens(const nlohmann::ordered_json& messages,
                                   const std::vector<ChatMessage>& extra = {});

// Token accounting around one upstream call (token limits); the API layer implements it. A
// service that is given a gate calls Reserve once the upstream body is known and before the
// upstream is asked, and afterwards at most one of Settle (an answer arrived whole) or Release
// (the upstream produced nothing billable: it could not be reached or answered an error status).
// When neither is called (a stream that broke off, a client that went away, a timeout) the
// reservation stands: the upstream may have generated tokens that nobody reported.
// Used by one request at a time; not thread-safe.
class TokenGate {
 public:
  virtual ~TokenGate() = default;

  // Whether Reserve needs a TokenEstimate (estimating a /v1 body means parsing it into a tree).
  virtual bool NeedsEstimate() const { return true; }

  // Fails with kLimited when the request must not go upstream (the gate holds the answer to
  // send instead).
  virtual net::awaitable<Status> Reserve(TokenEstimate estimate) = 0;
  // Replaces the reservation by what the answer cost.
  virtual net::awaitable<void> Settle(TokenUsage usage) = 0;
  // Gives the whole reservation back.
  virtual net::awaitable<void> Release() = 0;
};

}  // namespace staple::chat
