#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "chat/message_fragments.h"
#include "chat/token_gate.h"
#include "chat/turn.h"
#include "common/net.h"
#include "common/result.h"

namespace staple::chat {

struct ServiceSettings {
  std::string model = "gpt-4o-mini";
  std::string system_prompt;
  // Memory of the serialized history messages kept for the next requests (MessageFragments).
  std::size_t fragment_cache_bytes = 32 * 1024 * 1024;
};

struct CompletionRequest {
  std::string owner;  // the caller's key id, "" without client keys (see TurnRequest)
  std::string user_id;
  std::string prompt;
  std::string request_id;
  std::chrono::system_clock::time_point received_at;
  // The user_id was generated for this request, so there is no history to read.
  bool new_conversation = false;
  // Token accounting (token limits), or null. See TokenGate for when it is called.
  std::shared_ptr<TokenGate> tokens;
  // The request's log note (http::Request::note), filled as the turn goes; null: none. Must
  // outlive the turn, its stream included.
  observe::RequestNote* note = nullptr;
};

struct Completion {
  std::string text;
  std::optional<std::int64_t> prompt_tokens;
  std::optional<std::int64_t> completion_tokens;
  std::string upstream;  // the upstream that answered ("" with a single upstream)
};

class CompletionStream;

// The seed endpoint's adapter around the turn pipeline (chat/turn.h): the upstream body is the
// configured model, the optional system prompt, the conversation's history window and the prompt;
// the answer is choices[0]'s text. Errors: those of TurnPipeline, and kUpstream for an upstream
// error status (its message names the status and the upstream's own message). Thread-safe.
class ConversationService {
 public:
  ConversationService(TurnPipeline& pipeline, ServiceSettings settings);

  net::awaitable<Result<Completion>> Complete(CompletionRequest request);
  // The model the seed endpoint asks for.
  const std::string& model() const { return settings_.model; }

  // The streaming variant: returns once the upstream accepted (2xx status and headers arrived),
  // so that a failure up to then is still an ordinary error answer. The stream must be destroyed
  // before the io_context it was opened on.
  net::awaitable<Result<std::unique_ptr<CompletionStream>>> OpenStream(CompletionRequest request);

 private:
  TurnRequest Turn(CompletionRequest request, bool stream) const;
  BodyBuilder Builder(bool stream);
  // The upstream body: model, system message, the window of `history`, the prompt.
  Result<UpstreamBody> Body(const TurnRequest& request, const store::History& history,
                            std::size_t first, bool estimate, bool stream);
  Error StatusError(long status, std::string_view body) const;

  // Constant after construction.
  TurnPipeline& pipeline_;
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
  // Receives the whole answer once its turn is durable.
  using DoneSink = std::function<net::awaitable<Status>(Completion completion)>;

  // Hands each content piece of the upstream's answer to `deltas` as it arrives (the upstream is
  // read on only once it completed); once the turn is stored, hands the whole answer to `done`.
  // Errors: those of TurnStream::Run (nothing is stored on failure, `done` is not called).
  net::awaitable<Status> Run(DeltaSink deltas, DoneSink done);
  // The upstream that answered ("" with a single upstream).
  const std::string& upstream() const { return stream_->upstream(); }

 private:
  friend class ConversationService;
  explicit CompletionStream(std::unique_ptr<TurnStream> stream) : stream_(std::move(stream)) {}

  std::unique_ptr<TurnStream> stream_;
};

}  // namespace staple::chat
