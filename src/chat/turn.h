#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chat/context_window.h"
#include "chat/stream_transcript.h"
#include "chat/token_gate.h"
#include "common/net.h"
#include "common/result.h"
#include "observe/metrics.h"
#include "observe/request_note.h"
#include "store/conversation_store.h"
#include "upstream/client.h"

namespace staple::chat {

// One conversational turn, the same for every chat API (the seed endpoint, /v1/chat/completions,
// and any later one). The API-specific parts are small adapters around it: they parse the
// client's request, say how the upstream body is built from the conversation's history, and shape
// the answer. The pipeline runs, in this order:
//
//   check    refuse the turn (kStorage) when the store reports that its writes are failing
//   prepare  read the conversation's recent messages (when the turn continues one); the adapter
//            builds the upstream body from the history window and estimates its tokens
//   admit    reserve the estimate with the turn's TokenGate (kLimited when refused)
//   ask      POST /chat/completions upstream (whole, or as a stream)
//   settle   an answer that arrived whole settles the reservation with its usage; an error status
//            or an unreachable upstream releases it; a broken stream, a client that went away or
//            a timeout keep it (tokens may have been generated)
//   store    append the turn durably; only then does the answer (or a stream's final event) go
//            out. A turn whose upstream call failed is not stored.
//
// Errors, as ErrorKind (api/errors maps them to each API's status and body):
//   kMisconfigured  no API key for an upstream that needs one (nothing was asked)
//   kStorage        the conversation could not be read or the turn could not be stored (also
//                   before anything is asked, while the store's writes are failing)
//   kLimited        the TokenGate refused the turn (the gate holds the answer to send)
//   kUpstream       the upstream could not be reached, broke off, or sent something unusable
//   kTimeout        the upstream did not answer in time
//   kOverloaded     every upstream that serves the model is cooling down (upstream::Router)
//   kNotFound       no upstream serves the model (upstream::Router)
//   kCancelled      the client went away during a stream (the upstream transfer is cancelled)
// An upstream error status is not an Error: the adapter decides how to show it.

struct TurnSettings {
  WindowLimits window;
  // Without a key the default OpenAI upstream cannot answer; a keyless local upstream can.
  bool key_missing = false;
  // The upstreams' keys, only to scrub them from any upstream text that might echo one.
  std::vector<std::string> api_keys;
  std::size_t max_error_body_bytes = 1024 * 1024;  // an error answer to a stream request
  // Whether some upstream serves a model (upstream::Router::Serves); null: every model is served.
  std::function<bool(std::string_view model)> serves_model;
};

// One turn as the adapter describes it.
struct TurnRequest {
  // Whose conversation it is: the caller's client key id, "" without client keys. A conversation
  // is identified by (owner, conversation_id): another key never sees it.
  std::string owner;
  std::string conversation_id;  // the conversation the turn is stored under
  bool read_history = false;    // the conversation's stored history is read for the body
  std::string prompt;           // the user message stored for the turn
  std::string model;            // stored when the upstream does not report the model
  std::string request_id;
  std::chrono::system_clock::time_point received_at;
  bool stream = false;
  // The answer must carry choices[0].message.content as a string or null (the seed endpoint
  // answers with that text); otherwise any JSON object with choices is an answer.
  bool require_message_text = false;
  // Token accounting (token limits), or null. See TokenGate for when it is called.
  std::shared_ptr<TokenGate> tokens;
  // Called in `store`, once the answer is whole and just before the turn is appended, on the
  // pipeline's coroutine: may attach what the API stores with the turn (Turn::response) and
  // change its text. `answer_body` is the upstream's whole answer of a non-streaming turn, ""
  // for a stream (whose adapter saw every piece before); `answer` is what the pipeline read of
  // it. An error refuses the turn: nothing is stored and the error is the turn's. Null: the turn
  // is stored as it is.
  std::function<Status(store::Turn& turn, std::string_view answer_body, const ChatAnswer& answer)>
      record;
  // The request's log note (http::Request::note), filled as the turn goes; null: none. Must
  // outlive the turn, its stream included.
  observe::RequestNote* note = nullptr;
};

// The upstream request body an adapter builds, and its estimated cost.
struct UpstreamBody {
  std::string json;
  TokenEstimate estimate;  // read only when the turn has a TokenGate
};

// Builds the upstream body of `request` from the conversation's recent stored messages (empty for
// a new conversation), of which `window_start` is the first that fits the history window. Called
// once, synchronously, before anything is reserved or asked, while the caller of the pipeline is
// suspended (so it may refer to that caller's locals). `estimate`: fill UpstreamBody::estimate.
// Errors are returned as they are (e.g. kInvalidArgument).
using BodyBuilder =
    std::function<Result<UpstreamBody>(const TurnRequest& request, const store::History& history,
                                       std::size_t window_start, bool estimate)>;

// The result of a non-streaming turn.
struct TurnResult {
  // The upstream's answer, whatever its status (the API key scrubbed from an error body).
  upstream::Response response;
  // For a 2xx answer: what it said, stored durably before the turn returned. std::nullopt for an
  // error status (nothing stored, the reservation released).
  std::optional<ChatAnswer> answer;
};

class TurnStream;

// Runs turns. Thread-safe; calls must be awaited as upstream::Client requires.
class TurnPipeline {
 public:
  TurnPipeline(store::ConversationStore& store, upstream::Client& upstream,
               observe::Metrics& metrics, TurnSettings settings);

  // prepare, admit, ask for the whole answer, settle, store.
  net::awaitable<Result<TurnResult>> Complete(TurnRequest request, BodyBuilder build);

  // prepare, admit, and ask for a stream: returns once the upstream's status and headers arrived
  // (retries happen only before that), so that a failure up to then is an ordinary answer. An
  // error status has released the reservation already. The stream must be destroyed before the
  // io_context it was opened on.
  net::awaitable<Result<std::unique_ptr<TurnStream>>> OpenStream(TurnRequest request,
                                                                 BodyBuilder build);

  const TurnSettings& settings() const { return settings_; }
  // Whether a request for `model` can be routed (adapters answer 404 model_not_found if not).
  bool Serves(std::string_view model) const {
    return !settings_.serves_model || settings_.serves_model(model);
  }
  observe::Metrics& metrics() const { return metrics_; }

 private:
  // Counts and scrubs a failed upstream exchange and writes it in `note` (if any): kTimeout, and
  // a router's kOverloaded and kNotFound stay, everything else is kUpstream. `kind` is the
  // metric's label; the first form derives it from the error.
  Error UpstreamFailure(const Error& error, observe::RequestNote* note);
  Error UpstreamFailure(const Error& error, observe::RequestNote* note,
                        observe::UpstreamFailureKind kind);

  friend class TurnStream;
  // prepare and admit; the body is moved into the result.
  net::awaitable<Result<UpstreamBody>> Prepare(const TurnRequest& request, BodyBuilder build);
  // Settles the tokens with what `answer` cost (and `abandoned` hedged attempts the prompt), then
  // stores the turn (answered by `upstream`).
  net::awaitable<Status> Finish(const TurnRequest& request, const ChatAnswer& answer,
                                std::chrono::steady_clock::duration upstream_time,
                                std::string_view answer_body, const std::string& upstream,
                                std::uint32_t abandoned);

  // Constant after construction.
  store::ConversationStore& store_;
  upstream::Client& upstream_;
  observe::Metrics& metrics_;
  const TurnSettings settings_;
};

// A turn whose answer streams. Used once, from the coroutine that opened it: ReadBody() for an
// error status, Run() for a success.
class TurnStream {
 public:
  long status() const { return status_; }
  bool success() const { return status_ >= 200 && status_ <= 299; }
  const std::string& content_type() const { return content_type_; }
  const upstream::Headers& headers() const { return headers_; }  // lower-case names
  // The name of the upstream that answered ("" with a single upstream).
  const std::string& upstream() const { return upstream_; }

  // The whole body of an error answer, the API key scrubbed. Errors: kUpstream (broken, or longer
  // than TurnSettings::max_error_body_bytes), kTimeout.
  net::awaitable<Result<std::string>> ReadBody();

  // What Run() hands on at a time: whole events of the upstream's body as received (or 64 KiB of a
  // body that is not an event stream), and the answer text they add to choices[0].
  struct Piece {
    std::string bytes;
    std::string delta;
    // The turn is stored: this piece and every later one come after the commit. The first such
    // piece starts with the upstream's "[DONE]" event (it may be empty when the upstream sent
    // none); an adapter that writes an answer of its own writes its final event then.
    bool stored = false;
  };
  // Receives pieces; fails (kCancelled) when the client went away.
  using PieceSink = std::function<net::awaitable<Status>(Piece piece)>;

  // Hands the upstream's body to `sink` piece by piece as it arrives, reading on only once `sink`
  // completed. When the answer is complete (a "[DONE]" event, or the end of a body whose choice
  // carried a finish reason) its tokens are settled and the turn is stored, and only then is the
  // first `stored` piece handed on. Returns the stored answer once the body ended (a sink failure
  // after the commit only stops the relay). Errors: kCancelled (`sink` failed before the commit:
  // the upstream transfer is cancelled), kUpstream (the stream broke off or carried an error event;
  // the pieces up to and including an error event were handed on, see upstream_error_relayed()),
  // kTimeout (the upstream went idle), kStorage (the turn could not be stored). Nothing is stored
  // on any error.
  net::awaitable<Result<ChatAnswer>> Run(PieceSink sink);

  // After Run() failed with kUpstream: the upstream's own error event was handed to the sink.
  bool upstream_error_relayed() const { return upstream_error_relayed_; }
  // The stored answer, from the first `stored` piece on; std::nullopt before.
  const std::optional<ChatAnswer>& stored_answer() const { return stored_answer_; }

 private:
  friend class TurnPipeline;
  TurnStream(TurnPipeline& pipeline, TurnRequest request, std::unique_ptr<upstream::Stream> stream,
             std::chrono::steady_clock::time_point asked_at);
  // Counts a stream that broke off and returns its error.
  Error Broken(Error error);

  TurnPipeline& pipeline_;
  TurnRequest request_;
  std::unique_ptr<upstream::Stream> stream_;
  std::chrono::steady_clock::time_point asked_at_;
  long status_;
  std::string content_type_;
  upstream::Headers headers_;
  std::string upstream_;
  std::uint32_t abandoned_ = 0;  // hedged attempts cancelled for this stream
  bool upstream_error_relayed_ = false;
  std::optional<ChatAnswer> stored_answer_;
};

// The upstream request every turn sends: POST /chat/completions with `body`, the caller's request
// id, the client's model (what a Router routes by), and for a stream an SSE Accept header. A
// non-streaming request is answer_at_once: bounded by the total timeout, not the first-byte
// timeout.
upstream::Request ChatCompletionsRequest(std::string body, std::string_view request_id,
                                         std::string_view model, bool stream);

// `text` with every occurrence of `secret` (when at least 4 bytes long) replaced by "***".
std::string ScrubSecret(std::string text, std::string_view secret);
// The same for each of `secrets`.
std::string ScrubSecrets(std::string text, const std::vector<std::string>& secrets);

}  // namespace staple::chat
