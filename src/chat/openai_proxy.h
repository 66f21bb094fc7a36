#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_body.h"
#include "chat/stream_transcript.h"
#include "chat/turn.h"
#include "common/net.h"
#include "common/result.h"
#include "upstream/client.h"

namespace staple::chat {

struct ProxyRequest {
  std::string body;   // as the client sent it
  ChatBody parsed;    // ParseChatBody(body)
  std::string owner;  // the caller's key id, "" without client keys (see TurnRequest)
  std::string conversation_id;
  // True when the client named the conversation: its history is inserted. Otherwise the body goes
  // upstream unchanged and the turn is logged under `conversation_id` (a generated one).
  bool remember = false;
  std::string request_id;
  std::chrono::system_clock::time_point received_at;
  // Token accounting (token limits), or null. See TokenGate for when it is called.
  std::shared_ptr<TokenGate> tokens;
  // The request's log note (http::Request::note), filled as the turn goes; null: none. Must
  // outlive the turn, its stream included.
  observe::RequestNote* note = nullptr;
};

// POST /v1/chat/completions's adapter around the turn pipeline (chat/turn.h), and GET /models:
// the client's body goes upstream as it is, or with the conversation's history window inserted
// after its leading system/developer messages. Errors: those of TurnPipeline; an upstream error
// status is not an Error. Thread-safe; calls must be awaited as upstream::Client requires.
class OpenAIProxy {
 public:
  // `listed_models`: what GET /models answers without asking the upstream (the models of a
  // Router's configuration); std::nullopt: ask the upstream.
  OpenAIProxy(TurnPipeline& pipeline, upstream::Client& upstream,
              std::optional<std::vector<std::string>> listed_models = std::nullopt);

  // Non-streaming: the upstream's answer, whatever its status. A 2xx answer's turn is stored
  // before this returns; a 2xx body that is not JSON is a kUpstream error.
  net::awaitable<Result<upstream::Response>> Complete(ProxyRequest request);

  // Streaming: returns once the upstream's status and headers arrived (retries happen only before
  // that). Relay a success with TurnStream::Run (the pieces' bytes are the upstream's body).
  net::awaitable<Result<std::unique_ptr<TurnStream>>> OpenStream(ProxyRequest request);

  // Whether `model` can be routed (TurnPipeline::Serves).
  bool Serves(std::string_view model) const { return pipeline_.Serves(model); }

  // GET /models, whatever its status (or the listed models). Errors: kUpstream, kTimeout.
  net::awaitable<Result<upstream::Response>> Models(std::string request_id);

  // GET /models/{id} when the models are listed (a Router's configuration): answered here, 404
  // model_not_found shape left to the caller (std::nullopt). Without a list: std::nullopt and
  // `listed` false, and the call is forwarded like any other.
  std::optional<upstream::Response> ListedModel(std::string_view id, bool& listed) const;

  // Any other /v1 call (embeddings, moderations, audio, images, files, ...): `request` goes to
  // the upstream as it is with the operator's key (a Router picks by request.model). A 2xx answer
  // comes back as a stream of body bytes (relay it with RelayForwarded); any other status as a
  // whole response, its body read (at most max_error_body_bytes) and scrubbed of the keys. A
  // failure is counted, scrubbed and written in `note`. Errors: kUpstream, kTimeout, kOverloaded,
  // kMisconfigured.
  struct Forwarded {
    std::unique_ptr<upstream::Stream> stream;  // a 2xx answer, its body still to read
    std::optional<upstream::Response> answer;  // any other status, read whole
  };
  net::awaitable<Result<Forwarded>> Forward(upstream::Request request, observe::RequestNote* note);

  // Hands a forwarded body to `sink` as it arrives, until its end (Ok) or a sink that fails (Ok:
  // the client left). A source that breaks is counted, written in `note` and returned: the
  // caller then cuts the answer short so that the client sees it incomplete. `stream` must
  // outlive the call (the caller awaits it at once).
  using ByteSink = std::function<net::awaitable<Status>(std::string bytes)>;
  net::awaitable<Status> RelayForwarded(upstream::Stream& stream, ByteSink sink,
                                        observe::RequestNote* note);

 private:
  // The turn, with the client's body moved into `body` for the builder.
  static TurnRequest Turn(ProxyRequest& request, std::string& body);
  static BodyBuilder Builder(std::string* body, const ChatBody* parsed);

  // Constant after construction.
  TurnPipeline& pipeline_;
  upstream::Client& upstream_;
  std::optional<std::vector<std::string>> listed_models_;
};

}  // namespace staple::chat
