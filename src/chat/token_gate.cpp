#include "chat/token_gate.h"

#include "chat/openai_proxy.h"

namespace staple::chat {
namespace {

constexpr std::uint64_t kTokensPerMessage = 4;

}  // namespace

std::uint64_t EstimateTextTokens(std::string_view text) { return (text.size() + 3) / 4; }

std::uint64_t EstimateMessageTokens(std::string_view text) {
  return EstimateMessageTokens(text.size());
}

std::uint64_t EstimateMessageTokens(std::size_t text_bytes) {
  return kTokensPerMessage + (text_bytes + 3) / 4;
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
