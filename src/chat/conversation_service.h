#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "chat/context_window.h"
#include "chat/message_fragments.h"
#include "chat/token_gate.h"
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
  // The user_id was generated for this request, so there is no history to read.
  bool new_conversation = false;
  // Token accounting (token limits), or null. See TokenGate for when it is called.
  std::shared_ptr<TokenGate> tokens;
};

struct Completion {
  std::string text;
  std::optional<std::int64_t> prompt_tokens;
  std::optional<std::int64_t> completion_tokens;
};

class CompletionStream;

// The seed endpoint's logic, free of HTTP: read the user's stored conversation, build the context
// window, ask the upstream, store the turn durably, return the answer.
// Errors: kUpstream (the upstream failed: error status, invalid body, unreachable), kTimeout (the
// upstream did not answer in time), kUnavailable (the turn could not be stored), kInternal
// (no API key configured), kLimited (the request's TokenGate refused it). A failed turn is not
// stored. Thread-safe.
class ConversationService {
 public:
  ConversationService(store::ConversationStore& store, upstream::Client& upstream,
                      observe::Metrics& metrics, ServiceSettings settings);

  net::awaitable<Result<Completion>> Complete(CompletionRequest request);

  // The streaming variant: reads the conversation and asks the upstream for a streamed answer;
  // returns once the upstream accepted (2xx status and headers arrived), so that a failure up to
  // then is still an ordinary error answer. Same errors as Complete(). The stream must be destroyed
  // before the io_context it was opened on.
  net::awaitable<Result<std::unique_ptr<CompletionStream>>> OpenStream(CompletionRequest request);

 private:
  friend class CompletionStream;
  std::string Scrub(std::string text) const;
  Error UpstreamFailure(const Error& error);
  struct UpstreamBody {
    std::string json;
    TokenEstimate estimate;  // filled only when the request has a TokenGate
  };
  // The upstream request body: the context window of the user's conversation plus the prompt.
  net::awaitable<Result<UpstreamBody>> RequestBody(CompletionRequest request, bool stream);
  // Reserves the estimate with the request's TokenGate, if any (kLimited when refused).
  static net::awaitable<Status> Reserve(const CompletionRequest& request, TokenEstimate estimate);
  static net::awaitable<void> Release(const CompletionRequest& request);
  // Stores the turn durably; `model` is the model that answered ("" when unknown).
  net::awaitable<Status> StoreTurn(CompletionRequest request, Completion completion,
                                   std::string model,
                                   std::chrono::steady_clock::duration upstream_time);

  // Constant after construction.
  store::ConversationStore& store_;
  upstream::Client& upstream_;
  observe::Metrics& metrics_;
  const ServiceSettings settings_;
  const std::string model_json_;      // settings_.model as a JSON string
  const std::string system_message_;  // the serialized system message, "" without one
  // Thread-safe.
  MessageFragments fragments_;
};

// A seed completion being streamed (see ConversationService::OpenStream). Used once, from the
// coroutine that opened it.
class CompletionStream {
 public:
  // Receives each piece of the answer's text; fails (kCancelled) when the client went away.
  using DeltaSink = std::function<net::awaitable<Status>(std::string delta)>;

  // Hands each content piece of the upstream's answer to `sink` as it arrives (the upstream is
  // read on only once `sink` completed), then stores the turn durably and returns the whole
  // answer. Nothing is stored on failure. Errors: kCancelled (`sink` failed: the upstream transfer
  // is cancelled), kUpstream (the stream broke or reported an error), kTimeout (the upstream went
  // idle), kUnavailable (the turn could not be stored).
  net::awaitable<Result<Completion>> Run(DeltaSink sink);

 private:
  friend class ConversationService;
  CompletionStream(ConversationService& service, CompletionRequest request,
                   std::unique_ptr<upstream::Stream> stream,
                   std::chrono::steady_clock::time_point asked_at);

  ConversationService& service_;
  CompletionRequest request_;
  std::unique_ptr<upstream::Stream> stream_;
  std::chrono::steady_clock::time_point asked_at_;
};

}  // namespace staple::chat
