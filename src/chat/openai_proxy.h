#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/context_window.h"
#include "chat/sse.h"
#include "chat/token_gate.h"
#include "chat/upstream_call.h"
#include "common/net.h"
#include "common/result.h"
#include "observe/metrics.h"
#include "store/conversation_store.h"
#include "upstream/client.h"

namespace staple::chat {

// ---- Plain functions over OpenAI's Chat Completions JSON (no I/O) ----------------------------

// What the gateway reads from a POST /v1/chat/completions body. The body itself goes upstream
// as the client sent it, or, when history is added, rewritten from a tree that keeps its key
// order.
struct ChatBody {
  bool stream = false;  // "stream": true
  std::string model;    // "" when absent or not a string
  std::string prompt;   // text of the last user message, "" when there is none
  // max_completion_tokens (or else max_tokens) times n, when the body sets a non-negative integer
  std::optional<std::uint64_t> max_completion_tokens;
};

// Parses a request body: it must be a JSON object whose `messages` is an array. Anything else
// about the body is the upstream's to judge. Errors: kInvalidArgument with a message fit for a
// 400 answer.
Result<ChatBody> ParseChatBody(std::string_view body);

// The text of a message's `content`: the string itself, or the `text` of its parts of type "text"
// joined; "" for anything else.
std::string MessageText(const nlohmann::ordered_json& message);

// Inserts `history` into `messages` (a JSON array) after its leading "system" and "developer"
// messages and before everything else.
void InsertHistory(nlohmann::ordered_json& messages, const std::vector<ChatMessage>& history);

// What a completed answer says, for the conversation log.
struct ChatAnswer {
  std::string text;   // choices[0]'s content; "" when it had none (e.g. only tool calls)
  std::string model;  // the model that answered, "" when not reported
  std::optional<std::int64_t> prompt_tokens;
  std::optional<std::int64_t> completion_tokens;
};

// The answer of a non-streaming `chat.completion` body; std::nullopt when the body is not a JSON
// object.
std::optional<ChatAnswer> AnswerOf(std::string_view body);

// Accumulates the `data` of the events of a streamed `chat.completion.chunk` answer. Not
// thread-safe.
class StreamTranscript {
 public:
  // Takes one event's data; returns the content it adds to choices[0] (often ""). Data after
  // "[DONE]" and data that is not JSON are ignored.
  std::string Add(std::string_view data);

  bool done() const { return done_; }          // "[DONE]" arrived
  bool finished() const { return finished_; }  // choices[0] carried a finish_reason
  // The message of an error event ({"error": ...}) the upstream sent instead of chunks.
  const std::optional<std::string>& error() const { return error_; }
  // Whether the answer arrived whole: [DONE] or a finish reason, and no error event.
  bool complete() const { return (done_ || finished_) && !error_; }
  const ChatAnswer& answer() const { return answer_; }

 private:
  ChatAnswer answer_;
  bool done_ = false;
  bool finished_ = false;
  std::optional<std::string> error_;
};

// ---- The OpenAI-compatible pass-through ------------------------------------------------------

struct ProxySettings {
  WindowLimits window;
  bool key_missing = false;                        // as ServiceSettings::key_missing
  std::string api_key;                             // only to scrub it from upstream error bodies
  std::size_t max_error_body_bytes = 1024 * 1024;  // an error answer to a stream request
};

struct ProxyRequest {
  std::string body;  // as the client sent it
  ChatBody parsed;   // ParseChatBody(body)
  std::string conversation_id;
  // True when the client named the conversation: its history is inserted. Otherwise the body goes
  // upstream unchanged and the turn is logged under `conversation_id` (a generated one).
  bool remember = false;
  std::string request_id;
  std::chrono::system_clock::time_point received_at;
  // Token accounting (token limits), or null. See TokenGate for when it is called.
  std::shared_ptr<TokenGate> tokens;
};

class ProxyStream;

// POST /v1/chat/completions and GET /v1/models without HTTP: forward the client's request with
// the gateway's key, add the conversation's memory, log successful turns durably.
// Errors of every call: kInternal (no API key configured), kUnavailable (the store could not be
// read or written), kUpstream (the upstream could not be reached or sent something unusable),
// kTimeout (the upstream did not answer in time), kLimited (the request's TokenGate refused it).
// An upstream error status is not an Error.
// Thread-safe; calls must be awaited as upstream::Client requires.
class OpenAIProxy {
 public:
  OpenAIProxy(store::ConversationStore& store, upstream::Client& upstream,
              observe::Metrics& metrics, ProxySettings settings);

  // Non-streaming: the upstream's answer, whatever its status. A 2xx answer's turn is stored
  // before this returns; a 2xx body that is not JSON is a kUpstream error.
  net::awaitable<Result<upstream::Response>> Complete(ProxyRequest request);

  // Streaming: returns once the upstream's status and headers arrived (retries happen only before
  // that). The stream must be destroyed before the io_context it was opened on.
  net::awaitable<Result<std::unique_ptr<ProxyStream>>> OpenStream(ProxyRequest request);

  // GET /models, whatever its status.
  net::awaitable<Result<upstream::Response>> Models(std::string request_id);

 private:
  friend class ProxyStream;
  struct Prepared {
    std::string body;
    TokenEstimate estimate;  // filled only when the request has a TokenGate
  };
  // The body to send: unchanged (moved out of `request`), or with the conversation's history
  // inserted. Takes a reference: awaited at once by the coroutine that owns `request`.
  net::awaitable<Result<Prepared>> UpstreamBody(ProxyRequest& request);
  // UpstreamBody, then the reservation with the request's TokenGate (kLimited when refused).
  net::awaitable<Result<Prepared>> Prepare(ProxyRequest& request);
  net::awaitable<Status> StoreTurn(const ProxyRequest& request, const ChatAnswer& answer,
                                   std::chrono::steady_clock::duration upstream_time);
  Error UpstreamFailure(const Error& error);

  // Constant after construction.
  store::ConversationStore& store_;
  upstream::Client& upstream_;
  observe::Metrics& metrics_;
  const ProxySettings settings_;
};

// A streamed answer of the upstream. Used once, from the coroutine that opened it: either
// ReadBody() (for an error status) or Relay().
class ProxyStream {
 public:
  long status() const { return status_; }
  bool success() const { return status_ >= 200 && status_ <= 299; }
  const std::string& content_type() const { return content_type_; }
  // The upstream's headers (lower-case names).
  const upstream::Headers& headers() const { return headers_; }

  // The whole body (an error answer), the API key scrubbed. Errors: kUpstream (broken, or longer
  // than max_error_body_bytes), kTimeout.
  net::awaitable<Result<std::string>> ReadBody();

  // Receives relayed bytes; fails (kCancelled) when the client went away.
  using ByteSink = std::function<net::awaitable<Status>(std::string bytes)>;

  // Hands the body to `sink` piece by piece as it arrives, asking the upstream for more only once
  // `sink` completed. When the answer is complete the turn is stored before the "[DONE]" event is
  // handed on (or at the end of the body when the upstream sends no "[DONE]"). An answer that
  // breaks off or carries an error event is not stored. Errors: kCancelled (`sink` failed: the
  // upstream transfer is cancelled), kUpstream / kTimeout (the stream broke; some bytes may have
  // been relayed), kUnavailable (the turn could not be stored; "[DONE]" was not relayed).
  net::awaitable<Status> Relay(ByteSink sink);

 private:
  friend class OpenAIProxy;
  ProxyStream(OpenAIProxy& proxy, ProxyRequest request, std::unique_ptr<upstream::Stream> stream,
              std::chrono::steady_clock::time_point asked_at);
  // The answer is complete: settles its tokens, then stores the turn.
  net::awaitable<Status> Finish(const ChatAnswer& answer,
                                std::chrono::steady_clock::duration upstream_time);

  OpenAIProxy& proxy_;
  ProxyRequest request_;
  std::unique_ptr<upstream::Stream> stream_;
  std::chrono::steady_clock::time_point asked_at_;
  long status_;
  std::string content_type_;
  upstream::Headers headers_;
};

}  // namespace staple::chat
