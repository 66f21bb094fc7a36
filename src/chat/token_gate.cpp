#include "chat/token_gate.h"

#include "chat/openai_proxy.h"

namespace staple::chat {
namespace {

constexpr std::uint64_t kTokensPerMessage = 4;

// About four bytes of text per token, rounded up.
constexpr std::uint64_t TokensOfBytes(std::size_t bytes) { return (bytes + 3) / 4; }

}  // namespace

std::uint64_t EstimateTextTokens(std::string_view text) { return TokensOfBytes(text.size()); }

std::uint64_t EstimateMessageTokens(std::string_view text) {
  return EstimateMessageTokens(text.size());
}

std::uint64_t EstimateMessageTokens(std::size_t text_bytes) {
  return kTokensPerMessage + TokensOfBytes(text_bytes);
}

std::uint64_t EstimatePromptTokens(const std::vector<ChatMessage>& messages) {
  std::uint64_t total = kReplyPrimingTokens;
  for (const auto& message : messages) total += EstimateMessageTokens(message.content);
  return total;
}

std::uint64_t EstimatePromptTokens(const nlohmann::ordered_json& messages,
                                   const std::vector<ChatMessage>& extra) {
  std::uint64_t total = EstimatePromptTokens(extra);
  if (!messages.is_array()) return total;
  for (const auto& message : messages) total += EstimateMessageTokens(MessageText(message));
  return total;
}

}  // namespace staple::chat
