#include "chat/turn.h"

#include <utility>

#include "chat/completion_scan.h"
#include "chat/sse.h"
#include "observe/log.h"

namespace staple::chat {
namespace {

// Handed on even without an event boundary once this much is held (an upstream that is not
// sending an event stream).
constexpr std::size_t kMaxPendingBytes = 64 * 1024;

bool IsSuccess(long status) { return status >= 200 && status <= 299; }

// Whether a stream's Content-Type is text/event-stream (parameters and case aside). A stream
// without one is read as an event stream too: some servers omit it.
bool IsEventStream(std::string_view content_type) {
  constexpr std::string_view kEventStream = "text/event-stream";
  const auto start = content_type.find_first_not_of(" \t");
  if (start == std::string_view::npos) return true;
  content_type.remove_prefix(start);
  if (content_type.size() < kEventStream.size()) return false;
  for (std::size_t i = 0; i < kEventStream.size(); ++i) {
    const char c = content_type[i];
    const char lower = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
    if (lower != kEventStream[i]) return false;
  }
  const std::string_view rest = content_type.substr(kEventStream.size());
  return rest.empty() || rest[0] == ';' || rest[0] == ' ' || rest[0] == '\t';
}

TokenUsage UsageOf(const ChatAnswer& answer) {
  return TokenUsage{answer.prompt_tokens, answer.completion_tokens, answer.text.size()};
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

std::int64_t Milliseconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// What an upstream error answer says, for the log: its error.message when it is OpenAI's shape,
// else the start of the body (one line).
std::string ErrorAnswerText(long status, std::string_view body) {
  constexpr std::size_t kMaxShown = 200;
  std::string message;
  const auto tree = nlohmann::json::parse(body, nullptr, false);
  if (tree.is_object()) {
    const auto error = tree.find("error");
    if (error != tree.end() && error->is_object()) {
      const auto text = error->find("message");
      if (text != error->end() && text->is_string()) message = text->get<std::string>();
    } else if (error != tree.end() && error->is_string()) {
      message = error->get<std::string>();
    }
  }
  if (message.empty()) message = std::string(body.substr(0, kMaxShown));
  if (message.size() > kMaxShown) message.resize(kMaxShown);
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return "upstream answered " + std::to_string(status) + (message.empty() ? "" : ": " + message);
}

observe::UpstreamFailureKind KindOf(const Error& error) {
  switch (error.kind) {
    case ErrorKind::kTimeout:
      return observe::UpstreamFailureKind::kTimeout;
    case ErrorKind::kOverloaded:
      return observe::UpstreamFailureKind::kUnavailable;
    default:
      return observe::UpstreamFailureKind::kTransport;
  }
}

// The answer of a non-streaming body, or std::nullopt when it is not one.
std::optional<ChatAnswer> ReadAnswer(std::string_view body, bool require_message_text) {
  auto fields = ScanCompletion(body);
  if (!fields) return std::nullopt;
  using Content = CompletionFields::Content;
  if (require_message_text && fields->message_content != Content::kString &&
      fields->message_content != Content::kNull) {
    return std::nullopt;
  }
  ChatAnswer answer;
  if (fields->message_content == Content::kString) answer.text = std::move(fields->message_text);
  answer.model = std::move(fields->model);
  answer.prompt_tokens = fields->prompt_tokens;
  answer.completion_tokens = fields->completion_tokens;
  answer.finish_reason = std::move(fields->finish_reason_text);
  answer.plain_message = fields->has_first_choice && fields->has_message &&
                         !fields->message_tool_calls && !fields->message_refusal;
  return answer;
}

}  // namespace

upstream::Request ChatCompletionsRequest(std::string body, std::string_view request_id,
                                         std::string_view model, bool stream) {
  upstream::Request request;
  request.model = model;
  request.path = "/chat/completions";
  request.body = std::move(body);
  request.headers.emplace_back("X-Request-Id", std::string(request_id));
  if (stream) request.headers.emplace_back("Accept", "text/event-stream");
  // A non-streaming answer's first byte comes when the whole answer is generated.
  request.answer_at_once = !stream;
  return request;
}

std::string ScrubSecret(std::string text, std::string_view secret) {
  if (secret.size() < 4) return text;
  for (auto pos = text.find(secret); pos != std::string::npos; pos = text.find(secret, pos)) {
    text.replace(pos, secret.size(), "***");
  }
  return text;
}

std::string ScrubSecrets(std::string text, const std::vector<std::string>& secrets) {
  for (const auto& secret : secrets) text = ScrubSecret(std::move(text), secret);
  return text;
}

TurnPipeline::TurnPipeline(store::ConversationStore& store, upstream::Client& upstream,
                           observe::Metrics& metrics, TurnSettings settings)
    : store_(store), upstream_(upstream), metrics_(metrics), settings_(std::move(settings)) {}

Error TurnPipeline::UpstreamFailure(const Error& error, observe::RequestNote* note,
                                    observe::UpstreamFailureKind kind_of_failure) {
  // kNotFound (no upstream serves the model) asked nobody: not an upstream failure.
  if (error.kind != ErrorKind::kNotFound) metrics_.CountUpstreamError(kind_of_failure);
  metrics_.CountFailedTurn();
  // A router's refusals keep their kind: nothing was asked (kOverloaded: every upstream is cooling
  // down; kNotFound: no upstream serves the model).
  auto kind = ErrorKind::kUpstream;
  if (error.kind == ErrorKind::kTimeout || error.kind == ErrorKind::kOverloaded ||
      error.kind == ErrorKind::kNotFound) {
    kind = error.kind;
  }
  // upstream::Client messages already name the upstream ("upstream request failed: ...").
  auto failure = MakeError(kind, ScrubSecrets(error.message, settings_.api_keys));
  if (note != nullptr && kind != ErrorKind::kNotFound) note->Fail(failure.message);
  return failure;
}

Error TurnPipeline::UpstreamFailure(const Error& error, observe::RequestNote* note) {
  return UpstreamFailure(error, note, KindOf(error));
}

// `request` is a reference: awaited at once by the coroutine that owns it.
net::awaitable<Result<UpstreamBody>> TurnPipeline::Prepare(const TurnRequest& request,
                                                           BodyBuilder build) {
  if (request.note != nullptr) {
    request.note->conversation = request.conversation_id;
    request.note->model = request.model;
  }
  if (settings_.key_missing) {
    co_return MakeError(ErrorKind::kMisconfigured,
                        "OPENAI_API_KEY is not set: completions are unavailable until it is");
  }
  // A turn that could not be stored is refused before anything is read, reserved or asked: the
  // store knows its writes are failing (it retries on its own, and accepts turns again once a
  // write succeeds), and asking the upstream would only spend tokens on an answer nobody gets.
  if (Status writable = store_.WriteHealth(); !writable) {
    metrics_.CountFailedTurn();
    co_return MakeError(ErrorKind::kStorage,
                        "the conversation could not be stored: " + writable.error().message);
  }
  // prepare: the conversation so far (nothing to read for a new one), then the adapter's body.
  store::History history;
  if (request.read_history) {
    std::string owner = request.owner;
    std::string conversation = request.conversation_id;
    auto recent = co_await store_.RecentMessages(std::move(owner), std::move(conversation),
                                                 settings_.window.max_messages);
    if (!recent) {
      if (request.note != nullptr) {
        request.note->Fail("could not read the conversation: " + recent.error().message);
      }
      co_return MakeError(ErrorKind::kStorage,
                          "could not read the conversation: " + recent.error().message);
    }
    history = std::move(recent).value();
  }
  const std::size_t first = WindowStart(history, settings_.window);
  auto body = build(request, history, first, request.tokens && request.tokens->NeedsEstimate());
  if (!body) co_return body.error();

  // admit: the reservation is all or nothing; a refusal holds the answer in the gate.
  if (request.tokens) {
    Status reserved = co_await request.tokens->Reserve(body->estimate);
    if (!reserved) co_return reserved.error();
  }
  co_return body;
}

net::awaitable<Status> TurnPipeline::Finish(const TurnRequest& request, const ChatAnswer& answer,
                                            std::chrono::steady_clock::duration upstream_time,
                                            std::string_view answer_body,
                                            const std::string& upstream, std::uint32_t abandoned) {
  // settle before the answer goes out, so that the client's next request sees it.
  if (request.tokens) {
    TokenUsage usage = UsageOf(answer);
    usage.abandoned_attempts = abandoned;
    co_await request.tokens->Settle(usage);
  }
  metrics_.CountTokens(answer.prompt_tokens.value_or(0), answer.completion_tokens.value_or(0));
  if (request.note != nullptr) {
    request.note->upstream = upstream;
    request.note->upstream_ms = Milliseconds(upstream_time);
    request.note->prompt_tokens = answer.prompt_tokens.value_or(-1);
    request.note->completion_tokens = answer.completion_tokens.value_or(-1);
  }

  // store: the caller answers only once this returned success.
  store::Turn turn;
  turn.owner = request.owner;
  turn.user_id = request.conversation_id;
  turn.request_id = request.request_id;
  turn.model = answer.model.empty() ? request.model : answer.model;
  turn.prompt = request.prompt;
  turn.completion = answer.text;
  turn.prompt_time = request.received_at;
  turn.completion_time = std::chrono::system_clock::now();
  turn.prompt_tokens = answer.prompt_tokens;
  turn.completion_tokens = answer.completion_tokens;
  turn.latency_ms = std::chrono::duration_cast<std::chrono::milliseconds>(upstream_time).count();
  turn.upstream = upstream;
  if (request.record) {
    if (Status recorded = request.record(turn, answer_body, answer); !recorded) {
      metrics_.CountFailedTurn();
      if (request.note != nullptr) request.note->Fail(recorded.error().message);
      co_return recorded.error();
    }
  }
  auto stored = co_await store_.AppendTurn(std::move(turn));
  if (!stored) {
    metrics_.CountFailedTurn();
    if (request.note != nullptr) {
      request.note->Fail("the conversation could not be stored: " + stored.error().message);
    }
    co_return MakeError(ErrorKind::kStorage,
                        "the conversation could not be stored: " + stored.error().message);
  }
  co_return Ok();
}

net::awaitable<Result<TurnResult>> TurnPipeline::Complete(TurnRequest request, BodyBuilder build) {
  auto body = co_await Prepare(request, std::move(build));
  if (!body) co_return body.error();

  // ask
  auto upstream_request =
      ChatCompletionsRequest(std::move(body->json), request.request_id, request.model,
                             /*stream=*/false);
  const auto asked_at = std::chrono::steady_clock::now();
  auto response = co_await upstream_.Send(std::move(upstream_request));
  const auto upstream_time = std::chrono::steady_clock::now() - asked_at;
  metrics_.ObserveUpstream(Seconds(upstream_time));
  if (request.note != nullptr) {
    request.note->upstream_ms = Milliseconds(upstream_time);
    if (response) request.note->upstream = response->upstream;
  }

  // Nothing billable came back (an error status, an unreachable upstream): the reservation goes
  // back whole. A timeout keeps it: the upstream may have generated tokens nobody reports.
  if (response ? !IsSuccess(response->status) : response.error().kind != ErrorKind::kTimeout) {
    if (request.tokens) co_await request.tokens->Release();
  }
  if (!response) co_return UpstreamFailure(response.error(), request.note);
  if (!IsSuccess(response->status)) {
    metrics_.CountUpstreamError(observe::UpstreamFailureKind::kStatus);
    metrics_.CountFailedTurn();
    response->body = ScrubSecrets(std::move(response->body), settings_.api_keys);
    if (request.note != nullptr) {
      request.note->Fail(ErrorAnswerText(response->status, response->body));
    }
    co_return TurnResult{std::move(response).value(), std::nullopt};
  }
  auto answer = ReadAnswer(response->body, request.require_message_text);
  if (!answer) {
    co_return UpstreamFailure(
        MakeError(ErrorKind::kUpstream, "upstream returned an invalid completion body"),
        request.note, observe::UpstreamFailureKind::kInvalidAnswer);
  }

  // settle and store; the answer goes out only once its turn is durable.
  Status finished =
      co_await Finish(request, *answer, upstream_time, response->body, response->upstream, 0);
  if (!finished) co_return finished.error();
  co_return TurnResult{std::move(response).value(), std::move(answer)};
}

net::awaitable<Result<std::unique_ptr<TurnStream>>> TurnPipeline::OpenStream(TurnRequest request,
                                                                             BodyBuilder build) {
  auto body = co_await Prepare(request, std::move(build));
  if (!body) co_return body.error();

  auto upstream_request =
      ChatCompletionsRequest(std::move(body->json), request.request_id, request.model,
                             /*stream=*/true);
  const auto asked_at = std::chrono::steady_clock::now();
  auto opened = co_await upstream_.OpenStream(std::move(upstream_request));
  if (opened ? !IsSuccess((*opened)->status()) : opened.error().kind != ErrorKind::kTimeout) {
    if (request.tokens) co_await request.tokens->Release();
  }
  if (!opened) co_return UpstreamFailure(opened.error(), request.note);
  if (IsSuccess((*opened)->status()) && !IsEventStream((*opened)->content_type())) {
    // An upstream that answered a stream request with something else (e.g. a whole JSON
    // completion) cannot be relayed as the stream the client asked for. Its tokens may have been
    // generated, so the reservation stays, as for a timeout.
    const std::string content_type = (*opened)->content_type().substr(0, 100);
    opened->reset();  // cancels the transfer
    co_return UpstreamFailure(
        MakeError(ErrorKind::kUpstream,
                  "upstream answered a streaming request with Content-Type: " + content_type),
        request.note, observe::UpstreamFailureKind::kInvalidAnswer);
  }
  std::unique_ptr<TurnStream> stream(
      new TurnStream(*this, std::move(request), std::move(opened).value(), asked_at));
  if (!stream->success()) {
    metrics_.CountUpstreamError(observe::UpstreamFailureKind::kStatus);
    metrics_.CountFailedTurn();
    if (stream->request_.note != nullptr) {
      stream->request_.note->upstream = stream->upstream_;
      stream->request_.note->Fail("upstream answered " + std::to_string(stream->status()));
    }
  }
  co_return stream;
}

TurnStream::TurnStream(TurnPipeline& pipeline, TurnRequest request,
                       std::unique_ptr<upstream::Stream> stream,
                       std::chrono::steady_clock::time_point asked_at)
    : pipeline_(pipeline),
      request_(std::move(request)),
      stream_(std::move(stream)),
      asked_at_(asked_at),
      status_(stream_->status()),
      content_type_(stream_->content_type()),
      headers_(stream_->headers()),
      upstream_(stream_->upstream()),
      abandoned_(stream_->abandoned_attempts()) {}

Error TurnStream::Broken(Error error) {
  if (request_.note != nullptr) request_.note->upstream = upstream_;
  return pipeline_.UpstreamFailure(error, request_.note,
                                   error.kind == ErrorKind::kTimeout
                                       ? observe::UpstreamFailureKind::kTimeout
                                       : observe::UpstreamFailureKind::kBrokenStream);
}

net::awaitable<Result<std::string>> TurnStream::ReadBody() {
  // The transfer ends with this call, whatever happens.
  std::unique_ptr<upstream::Stream> stream = std::move(stream_);
  if (!stream) co_return MakeError(ErrorKind::kInternal, "the upstream stream was already used");
  std::string body;
  for (;;) {
    auto next = co_await stream->Next();
    if (!next) {
      const auto kind =
          next.error().kind == ErrorKind::kTimeout ? ErrorKind::kTimeout : ErrorKind::kUpstream;
      co_return MakeError(kind, ScrubSecrets(next.error().message, pipeline_.settings_.api_keys));
    }
    if (!next->has_value()) break;
    body += **next;
    if (body.size() > pipeline_.settings_.max_error_body_bytes) {
      co_return MakeError(ErrorKind::kUpstream, "upstream error body is too large");
    }
  }
  co_return ScrubSecrets(std::move(body), pipeline_.settings_.api_keys);
}

net::awaitable<Result<ChatAnswer>> TurnStream::Run(PieceSink sink) {
  // The transfer ends with this call: returning early (client gone, upstream broken) destroys the
  // stream, which cancels the upstream transfer at once.
  std::unique_ptr<upstream::Stream> stream = std::move(stream_);
  if (!stream) co_return MakeError(ErrorKind::kInternal, "the upstream stream was already used");
  SseParser parser;
  StreamTranscript transcript;
  // Bytes received but not handed on yet: the unfinished event. Handing on whole events only
  // keeps an error event that follows a break readable.
  std::string pending;
  std::string delta;  // answer text of the events in `pending`
  bool stored = false;
  bool first_bytes = true;

  for (;;) {
    auto next = co_await stream->Next();
    if (!next) {
      if (stored) break;  // the answer is whole and durable; only the relay of the rest failed
      co_return Broken(next.error());
    }
    if (!next->has_value()) break;
    if (first_bytes) {
      first_bytes = false;
      pipeline_.metrics_.ObserveFirstToken(Seconds(std::chrono::steady_clock::now() - asked_at_));
    }
    if (stored) {
      // The rest of the body after "[DONE]" is handed on as it comes; a client that left now
      // changes nothing.
      Piece after{std::move(**next), {}, true};
      Status written = co_await sink(std::move(after));
      if (!written) break;
      continue;
    }

    std::vector<SseEvent> events;
    if (Status fed = parser.Feed(**next, events); !fed) co_return Broken(fed.error());
    const std::size_t base = pending.size();
    pending += **next;

    // Where "[DONE]" starts, to store the turn just before handing it on.
    std::optional<std::size_t> done_at;
    for (std::size_t i = 0; i < events.size() && !transcript.done(); ++i) {
      delta += transcript.Add(events[i].data);
      if (transcript.error()) {
        // The upstream's own error event ends the answer: hand it on, store nothing.
        Piece last{pending.substr(0, base + events[i].end), std::move(delta), false};
        Status written = co_await sink(std::move(last));
        if (!written) co_return written.error();
        upstream_error_relayed_ = true;
        co_return Broken(
            MakeError(ErrorKind::kUpstream, "upstream reported an error: " + *transcript.error()));
      }
      if (transcript.done()) done_at = i == 0 ? 0 : base + events[i - 1].end;
    }

    std::size_t flush = 0;
    if (parser.boundary()) flush = base + *parser.boundary();
    if (pending.size() > kMaxPendingBytes) flush = pending.size();  // not an event stream
    if (done_at) flush = *done_at;
    if (flush > 0) {
      Piece piece{pending.substr(0, flush), std::move(delta), false};
      delta.clear();
      pending.erase(0, flush);
      Status written = co_await sink(std::move(piece));
      if (!written) co_return written.error();
    }
    if (done_at) {
      const auto upstream_time = std::chrono::steady_clock::now() - asked_at_;
      pipeline_.metrics_.ObserveUpstream(Seconds(upstream_time));
      const std::string_view streamed;  // a stream's adapter saw its pieces
      Status committed = co_await pipeline_.Finish(request_, transcript.answer(), upstream_time,
                                                   streamed, upstream_, abandoned_);
      if (!committed) co_return committed.error();
      stored = true;
      stored_answer_ = transcript.answer();
      Piece rest{std::move(pending), {}, true};
      pending.clear();
      Status written = co_await sink(std::move(rest));
      if (!written) break;
    }
  }
  if (stored) co_return transcript.answer();

  // The body ended without "[DONE]". An upstream that sends none still ends a whole answer with a
  // finish reason; anything else broke off. (Every dispatched event was handed on at its
  // boundary; what is pending is an unterminated last event, which is not part of the answer.)
  if (!transcript.complete()) {
    co_return Broken(
        MakeError(ErrorKind::kUpstream, "upstream stream ended before the answer was complete"));
  }
  const auto upstream_time = std::chrono::steady_clock::now() - asked_at_;
  pipeline_.metrics_.ObserveUpstream(Seconds(upstream_time));
  const std::string_view streamed;
  Status committed = co_await pipeline_.Finish(request_, transcript.answer(), upstream_time,
                                               streamed, upstream_, abandoned_);
  if (!committed) co_return committed.error();
  stored_answer_ = transcript.answer();
  Piece rest{std::move(pending), {}, true};
  Status written = co_await sink(std::move(rest));
  (void)written;  // the turn is stored: a client that left changes nothing
  co_return transcript.answer();
}

}  // namespace staple::chat
