#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "chat/context_window.h"
#include "common/net.h"
#include "common/result.h"
#include "observe/metrics.h"
#include "store/conversation_store.h"
#include "upstream/client.h"

namespace staple::chat {

struct ServiceSettings {
  std::string model = "gpt-4o-mini";
  std::string system_prompt;
  WindowLimits window;
  // Without a key the default OpenAI upstream cannot answer; a keyless local upstream can.
  bool key_missing = false;
  std::string api_key;  // only to scrub it from any upstream text that might echo it
};

struct CompletionRequest {
  std::string user_id;
  std::string prompt;
  std::string request_id;
  std::chrono::system_clock::time_point received_at;
};

struct Completion {
  std::string text;
  std::optional<std::int64_t> prompt_tokens;
  std::optional<std::int64_t> completion_tokens;
};

// The seed endpoint's logic, free of HTTP: read the user's stored conversation, build the context
// window, ask the upstream, store the turn durably, return the answer.
// Errors: kUpstream (the upstream failed: error status, invalid body, unreachable), kTimeout (the
// upstream did not answer in time), kUnavailable (the turn could not be stored), kInternal
// (no API key configured). A failed turn is not stored. Thread-safe.
class ConversationService {
 public:
  ConversationService(store::ConversationStore& store, upstream::Client& upstream,
                      observe::Metrics& metrics, ServiceSettings settings);

  net::awaitable<Result<Completion>> Complete(CompletionRequest request);

 private:
  std::string Scrub(std::string text) const;

  // Constant after construction.
  store::ConversationStore& store_;
  upstream::Client& upstream_;
  observe::Metrics& metrics_;
  const ServiceSettings settings_;
};

}  // namespace staple::chat
