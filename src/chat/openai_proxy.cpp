#include "chat/openai_proxy.h"

#include <array>
#include <limits>

#include "chat/completion_scan.h"
#include "chat/sax_scan.h"
#include "observe/log.h"

namespace staple::chat {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// Relayed even without an event boundary once this much is held (an upstream that is not sending
// an event stream).
constexpr std::size_t kMaxPendingBytes = 64 * 1024;

// Client and upstream text may hold invalid UTF-8: never let it turn into an exception.
std::string Dump(const ordered_json& value) {
  return value.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

// The string member `key` of a JSON object, or "".
std::string StringMember(const ordered_json& object, const char* key) {
  if (!object.is_object()) return {};
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

TokenUsage UsageOf(const ChatAnswer& answer) {
  return TokenUsage{answer.prompt_tokens, answer.completion_tokens, answer.text.size()};
}

}  // namespace

namespace {

// Where a /v1/chat/completions body is being read, and what the next value is.
enum class Where : std::uint8_t { kRoot, kMessages, kMessage, kContent, kPart };
enum class Member : std::uint8_t {
  kNone,
  kMessages,
  kStream,
  kModel,
  kMaxCompletionTokens,
  kMaxTokens,
  kN,
  kMessage,  // an element of "messages"
  kRole,
  kContent,
  kPart,  // an element of a message's "content" array
  kPartType,
  kPartText,
};

// Reads a /v1/chat/completions body in one pass (nlohmann's SAX interface) for what the gateway
// needs to know about it; the tree is built later only when the body must be rewritten or its
// tokens estimated. Repeated members: the last one counts, as in a parsed tree.
class ChatBodyScanner : public SaxScan<ChatBodyScanner, Where, Member, 5> {
 public:
  static Member KeyIn(Where where, std::string_view key) {
    switch (where) {
      case Where::kRoot:
        if (key == "messages") return Member::kMessages;
        if (key == "stream") return Member::kStream;
        if (key == "model") return Member::kModel;
        if (key == "max_completion_tokens") return Member::kMaxCompletionTokens;
        if (key == "max_tokens") return Member::kMaxTokens;
        if (key == "n") return Member::kN;
        return Member::kNone;
      case Where::kMessage:
        if (key == "role") return Member::kRole;
        if (key == "content") return Member::kContent;
        return Member::kNone;
      case Where::kPart:
        if (key == "type") return Member::kPartType;
        if (key == "text") return Member::kPartText;
        return Member::kNone;
      default:
        return Member::kNone;
    }
  }

  bool is_object = false;
  bool has_messages = false;
  bool messages_array = false;
  bool stream = false;
  std::string model;
  std::string prompt;  // of the last user message so far
  std::optional<std::uint64_t> max_completion_tokens;
  std::optional<std::uint64_t> max_tokens;
  std::optional<std::uint64_t> n;

  bool null() { return Scalar(); }
  bool boolean(bool value) {
    if (!skipping() && Begin() == Member::kStream) stream = value;
    return true;
  }
  bool number_integer(number_integer_t /*value*/) { return Scalar(); }
  bool number_unsigned(number_unsigned_t value) {
    if (skipping()) return true;
    switch (Begin()) {
      case Member::kMaxCompletionTokens:
        max_completion_tokens = value;
        break;
      case Member::kMaxTokens:
        max_tokens = value;
        break;
      case Member::kN:
        n = value;
        break;
      default:
        break;
    }
    return true;
  }
  bool number_float(number_float_t /*value*/, const string_t& /*text*/) { return Scalar(); }
  bool binary(binary_t& /*value*/) { return Scalar(); }

  bool string(string_t& value) {
    if (skipping()) return true;
    switch (Begin()) {
      case Member::kModel:
        model = value;
        break;
      case Member::kRole:
        role_ = value;
        break;
      case Member::kContent:
        text_ = value;
        break;
      case Member::kPartType:
        part_is_text_ = value == "text";
        break;
      case Member::kPartText:
        part_text_ = value;
        break;
      default:
        break;
    }
    return true;
  }

  bool start_object(std::size_t /*size*/) {
    if (skipping()) return Skip();
    if (top() == nullptr) {
      is_object = true;
      return Push(Where::kRoot, false);
    }
    switch (Begin()) {
      case Member::kMessage:
        role_.clear();
        text_.clear();
        return Push(Where::kMessage, false);
      case Member::kPart:
        part_is_text_ = false;
        part_text_.reset();
        return Push(Where::kPart, false);
      default:
        return Skip();
    }
  }

  bool start_array(std::size_t /*size*/) {
    if (skipping() || top() == nullptr) return Skip();
    switch (Begin()) {
      case Member::kMessages:
        messages_array = true;
        return Push(Where::kMessages, true);
      case Member::kContent:
        return Push(Where::kContent, true);
      default:
        return Skip();
    }
  }

  bool end_object() {
    if (skipping()) return Close();
    const Where where = top()->where;
    if (where == Where::kMessage && role_ == "user") prompt = text_;
    if (where == Where::kPart && part_is_text_ && part_text_) text_ += *part_text_;
    return Close();
  }

 private:
  // The member the value that starts now fills, with what an earlier value for it left cleared.
  Member Key() const {
    const Level* level = top();
    if (level == nullptr) return Member::kNone;  // a scalar as the whole body
    if (!level->is_array) return level->member;
    if (level->where == Where::kMessages) return Member::kMessage;
    if (level->where == Where::kContent) return Member::kPart;
    return Member::kNone;
  }
  Member Begin() {
    const Member member = Key();
    switch (member) {
      case Member::kMessages:
        has_messages = true;
        messages_array = false;
        prompt.clear();
        break;
      case Member::kStream:
        stream = false;
        break;
      case Member::kModel:
        model.clear();
        break;
      case Member::kMaxCompletionTokens:
        max_completion_tokens.reset();
        break;
      case Member::kMaxTokens:
        max_tokens.reset();
        break;
      case Member::kN:
        n.reset();
        break;
      case Member::kRole:
        role_.clear();
        break;
      case Member::kContent:
        text_.clear();
        break;
      case Member::kPartType:
        part_is_text_ = false;
        break;
      case Member::kPartText:
        part_text_.reset();
        break;
      default:
        break;
    }
    return member;
  }

  bool Scalar() {
    if (!skipping()) Begin();
    return true;
  }
  std::string role_;  // of the message being read
  std::string text_;  // of the message being read
  bool part_is_text_ = false;
  std::optional<std::string> part_text_;
};

}  // namespace

Result<ChatBody> ParseChatBody(std::string_view body) {
  ChatBodyScanner scanner;
  if (!json::sax_parse(body.begin(), body.end(), &scanner)) {
    return MakeError(ErrorKind::kInvalidArgument, "Request body is not valid JSON");
  }
  if (!scanner.is_object) {
    return MakeError(ErrorKind::kInvalidArgument, "Request body must be a JSON object");
  }
  if (!scanner.has_messages) {
    return MakeError(ErrorKind::kInvalidArgument, "Missing required parameter: 'messages'");
  }
  if (!scanner.messages_array) {
    return MakeError(ErrorKind::kInvalidArgument, "Invalid 'messages': expected an array");
  }
  ChatBody parsed;
  parsed.stream = scanner.stream;
  parsed.model = std::move(scanner.model);
  parsed.prompt = std::move(scanner.prompt);
  parsed.max_completion_tokens =
      scanner.max_completion_tokens ? scanner.max_completion_tokens : scanner.max_tokens;
  if (parsed.max_completion_tokens && scanner.n && *scanner.n > 1) {
    const std::uint64_t choices = *scanner.n;
    const std::uint64_t each = *parsed.max_completion_tokens;
    parsed.max_completion_tokens = each > std::numeric_limits<std::uint64_t>::max() / choices
                                       ? std::numeric_limits<std::uint64_t>::max()
                                       : each * choices;
  }
  return parsed;
}

std::string MessageText(const ordered_json& message) {
  if (!message.is_object()) return {};
  auto content = message.find("content");
  if (content == message.end()) return {};
  if (content->is_string()) return content->get<std::string>();
  std::string text;
  if (content->is_array()) {
    for (const auto& part : *content) {
      if (StringMember(part, "type") != "text") continue;
      auto part_text = part.find("text");
      if (part_text != part.end() && part_text->is_string()) {
        text += part_text->get<std::string>();
      }
    }
  }
  return text;
}

void InsertHistory(ordered_json& messages, const std::vector<ChatMessage>& history) {
  if (!messages.is_array() || history.empty()) return;
  auto position = messages.begin();
  while (position != messages.end()) {
    const auto role = StringMember(*position, "role");
    if (role != "system" && role != "developer") break;
    ++position;
  }
  ordered_json inserted = ordered_json::array();
  for (const auto& message : history) {
    inserted.push_back({{"role", message.role}, {"content", message.content}});
  }
  messages.insert(position, inserted.begin(), inserted.end());
}

std::optional<ChatAnswer> AnswerOf(std::string_view body) {
  auto fields = ScanCompletion(body);
  if (!fields) return std::nullopt;
  ChatAnswer answer;
  if (fields->message_content == CompletionFields::Content::kString) {
    answer.text = std::move(fields->message_text);
  }
  answer.model = std::move(fields->model);
  answer.prompt_tokens = fields->prompt_tokens;
  answer.completion_tokens = fields->completion_tokens;
  return answer;
}

std::string StreamTranscript::Add(std::string_view data) {
  if (done_) return {};
  if (data == "[DONE]") {
    done_ = true;
    return {};
  }
  auto chunk = ScanCompletion(data);
  if (!chunk) return {};
  if (chunk->error) {
    error_ = chunk->error_text.empty() ? std::string("the upstream reported an error")
                                       : std::move(chunk->error_text);
    return {};
  }
  if (!chunk->model.empty()) answer_.model = std::move(chunk->model);
  if (chunk->prompt_tokens) answer_.prompt_tokens = chunk->prompt_tokens;
  if (chunk->completion_tokens) answer_.completion_tokens = chunk->completion_tokens;
  if (!chunk->has_first_choice) return {};
  // Only choices[0] is recorded (a request with n > 1 still relays every choice).
  if (chunk->index && *chunk->index != 0) return {};
  if (chunk->finish_reason) finished_ = true;
  if (!chunk->delta_text) return {};
  answer_.text += *chunk->delta_text;
  return std::move(*chunk->delta_text);
}

OpenAIProxy::OpenAIProxy(store::ConversationStore& store, upstream::Client& upstream,
                         observe::Metrics& metrics, ProxySettings settings)
    : store_(store), upstream_(upstream), metrics_(metrics), settings_(std::move(settings)) {}

Error OpenAIProxy::UpstreamFailure(const Error& error) {
  return chat::UpstreamFailure(metrics_, error, settings_.api_key);
}

net::awaitable<Result<OpenAIProxy::Prepared>> OpenAIProxy::UpstreamBody(ProxyRequest& request) {
  Prepared out;
  std::vector<ChatMessage> history;
  if (request.remember) {
    std::string owner = request.conversation_id;
    auto stored = co_await store_.RecentMessages(std::move(owner), settings_.window.max_messages);
    if (!stored) {
      co_return MakeError(ErrorKind::kUnavailable,
                          "could not read the conversation: " + stored.error().message);
    }
    history = HistoryWindow(*stored, settings_.window);
  }
  // The tree is built only when the body is rewritten or its tokens are estimated (ParseChatBody
  // already found it valid).
  ordered_json tree;
  if (request.tokens || !history.empty()) tree = ordered_json::parse(request.body, nullptr, false);
  if (request.tokens) {
    out.estimate.prompt = EstimatePromptTokens(tree["messages"], history);
    out.estimate.max_completion = request.parsed.max_completion_tokens;
  }
  if (history.empty()) {
    out.body = std::move(request.body);
  } else {
    InsertHistory(tree["messages"], history);
    out.body = Dump(tree);
  }
  co_return out;
}

net::awaitable<Result<OpenAIProxy::Prepared>> OpenAIProxy::Prepare(ProxyRequest& request) {
  if (settings_.key_missing) {
    co_return MakeError(ErrorKind::kInternal,
                        "OPENAI_API_KEY is not set: completions are unavailable until it is");
  }
  auto prepared = co_await UpstreamBody(request);
  if (!prepared) co_return prepared.error();
  if (request.tokens) {
    Status reserved = co_await request.tokens->Reserve(prepared->estimate);
    if (!reserved) co_return reserved.error();
  }
  co_return prepared;
}

net::awaitable<Status> OpenAIProxy::StoreTurn(const ProxyRequest& request, const ChatAnswer& answer,
                                              std::chrono::steady_clock::duration upstream_time) {
  metrics_.CountTokens(answer.prompt_tokens.value_or(0), answer.completion_tokens.value_or(0));
  store::Turn turn;
  turn.user_id = request.conversation_id;
  turn.request_id = request.request_id;
  turn.model = answer.model.empty() ? request.parsed.model : answer.model;
  turn.prompt = request.parsed.prompt;
  turn.completion = answer.text;
  turn.prompt_time = request.received_at;
  turn.completion_time = std::chrono::system_clock::now();
  turn.prompt_tokens = answer.prompt_tokens;
  turn.completion_tokens = answer.completion_tokens;
  turn.latency_ms = std::chrono::duration_cast<std::chrono::milliseconds>(upstream_time).count();
  auto stored = co_await store_.AppendTurn(std::move(turn));
  if (!stored) {
    metrics_.CountFailedTurn();
    observe::Error("turn not stored",
                   {{"error", stored.error().message}, {"request_id", request.request_id}});
    co_return MakeError(ErrorKind::kUnavailable,
                        "the conversation could not be stored: " + stored.error().message);
  }
  co_return Ok();
}

net::awaitable<Result<upstream::Response>> OpenAIProxy::Complete(ProxyRequest request) {
  auto prepared = co_await Prepare(request);
  if (!prepared) co_return prepared.error();

  auto upstream_request =
      ChatCompletionsRequest(std::move(prepared->body), request.request_id, /*stream=*/false);
  const auto asked_at = std::chrono::steady_clock::now();
  auto response = co_await upstream_.Send(std::move(upstream_request));
  const auto upstream_time = std::chrono::steady_clock::now() - asked_at;
  metrics_.ObserveUpstream(std::chrono::duration<double>(upstream_time).count());
  if (request.tokens && (!response || response->status < 200 || response->status > 299)) {
    co_await request.tokens->Release();
  }
  if (!response) co_return UpstreamFailure(response.error());

  if (response->status < 200 || response->status > 299) {
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
    response->body = ScrubSecret(std::move(response->body), settings_.api_key);
    co_return std::move(response).value();
  }
  auto answer = AnswerOf(response->body);
  if (!answer) {
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
    co_return MakeError(ErrorKind::kUpstream, "upstream returned an invalid completion body");
  }
  if (request.tokens) {
    TokenUsage usage = UsageOf(*answer);
    co_await request.tokens->Settle(usage);
  }
  // The answer goes out only once its turn is durable.
  auto stored = co_await StoreTurn(request, *answer, upstream_time);
  if (!stored) co_return stored.error();
  co_return std::move(response).value();
}

net::awaitable<Result<std::unique_ptr<ProxyStream>>> OpenAIProxy::OpenStream(ProxyRequest request) {
  auto prepared = co_await Prepare(request);
  if (!prepared) co_return prepared.error();

  auto upstream_request =
      ChatCompletionsRequest(std::move(prepared->body), request.request_id, /*stream=*/true);
  const auto asked_at = std::chrono::steady_clock::now();
  auto opened = co_await upstream_.OpenStream(std::move(upstream_request));
  if (request.tokens && (!opened || (*opened)->status() < 200 || (*opened)->status() > 299)) {
    co_await request.tokens->Release();
  }
  if (!opened) co_return UpstreamFailure(opened.error());
  std::unique_ptr<ProxyStream> stream(
      new ProxyStream(*this, std::move(request), std::move(opened).value(), asked_at));
  if (!stream->success()) {
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
  }
  co_return stream;
}

net::awaitable<Result<upstream::Response>> OpenAIProxy::Models(std::string request_id) {
  upstream::Request upstream_request;
  upstream_request.method = "GET";
  upstream_request.path = "/models";
  upstream_request.headers.emplace_back("X-Request-Id", std::move(request_id));
  auto response = co_await upstream_.Send(std::move(upstream_request));
  if (!response) {
    metrics_.CountUpstreamError();
    const auto kind =
        response.error().kind == ErrorKind::kTimeout ? ErrorKind::kTimeout : ErrorKind::kUpstream;
    co_return MakeError(kind, ScrubSecret(response.error().message, settings_.api_key));
  }
  response->body = ScrubSecret(std::move(response->body), settings_.api_key);
  co_return std::move(response).value();
}

ProxyStream::ProxyStream(OpenAIProxy& proxy, ProxyRequest request,
                         std::unique_ptr<upstream::Stream> stream,
                         std::chrono::steady_clock::time_point asked_at)
    : proxy_(proxy),
      request_(std::move(request)),
      stream_(std::move(stream)),
      asked_at_(asked_at),
      status_(stream_->status()),
      content_type_(stream_->content_type()),
      headers_(stream_->headers()) {}

net::awaitable<Result<std::string>> ProxyStream::ReadBody() {
  // The transfer ends with this call, whatever happens.
  std::unique_ptr<upstream::Stream> stream = std::move(stream_);
  if (!stream) co_return MakeError(ErrorKind::kInternal, "the upstream stream was already used");
  std::string body;
  for (;;) {
    auto next = co_await stream->Next();
    if (!next) co_return proxy_.UpstreamFailure(next.error());
    if (!next->has_value()) break;
    body += **next;
    if (body.size() > proxy_.settings_.max_error_body_bytes) {
      co_return MakeError(ErrorKind::kUpstream, "upstream error body is too large");
    }
  }
  co_return ScrubSecret(std::move(body), proxy_.settings_.api_key);
}

net::awaitable<Status> ProxyStream::Finish(const ChatAnswer& answer,
                                           std::chrono::steady_clock::duration upstream_time) {
  if (request_.tokens) {
    TokenUsage usage = UsageOf(answer);
    co_await request_.tokens->Settle(usage);
  }
  Status committed = co_await proxy_.StoreTurn(request_, answer, upstream_time);
  co_return committed;
}

net::awaitable<Status> ProxyStream::Relay(ByteSink sink) {
  // The transfer ends with this call: returning early (client gone, upstream broken) destroys the
  // stream, which cancels the upstream transfer at once.
  std::unique_ptr<upstream::Stream> stream = std::move(stream_);
  if (!stream) co_return MakeError(ErrorKind::kInternal, "the upstream stream was already used");
  SseParser parser;
  StreamTranscript transcript;
  bool stored = false;
  // Bytes received but not relayed yet: the unfinished event. Relaying whole events only keeps an
  // error event that follows a break readable.
  std::string pending;

  for (;;) {
    auto next = co_await stream->Next();
    if (!next) {
      proxy_.metrics_.CountUpstreamError();
      proxy_.metrics_.CountFailedTurn();
      const auto kind =
          next.error().kind == ErrorKind::kTimeout ? ErrorKind::kTimeout : ErrorKind::kUpstream;
      co_return MakeError(kind, ScrubSecret(next.error().message, proxy_.settings_.api_key));
    }
    if (!next->has_value()) break;

    std::vector<SseEvent> events;
    if (Status fed = parser.Feed(**next, events); !fed) {
      proxy_.metrics_.CountUpstreamError();
      proxy_.metrics_.CountFailedTurn();
      co_return fed.error();
    }
    const std::size_t base = pending.size();
    pending += **next;

    // Where "[DONE]" starts, to store the turn just before relaying it.
    std::optional<std::size_t> done_at;
    for (std::size_t i = 0; i < events.size() && !transcript.done(); ++i) {
      transcript.Add(events[i].data);
      if (transcript.done() && !stored) done_at = i == 0 ? 0 : base + events[i - 1].end;
    }
    std::size_t flush = 0;
    if (parser.boundary()) flush = base + *parser.boundary();
    if (pending.size() > kMaxPendingBytes) flush = pending.size();  // not an event stream

    if (done_at) {
      if (*done_at > 0) {
        std::string head = pending.substr(0, *done_at);
        Status written = co_await sink(std::move(head));
        if (!written) co_return written;
        pending.erase(0, *done_at);
        flush -= *done_at;
      }
      if (transcript.complete()) {
        const auto upstream_time = std::chrono::steady_clock::now() - asked_at_;
        proxy_.metrics_.ObserveUpstream(std::chrono::duration<double>(upstream_time).count());
        Status committed = co_await Finish(transcript.answer(), upstream_time);
        if (!committed) co_return committed;
        stored = true;
      }
    }
    if (flush > 0) {
      std::string whole = pending.substr(0, flush);
      pending.erase(0, flush);
      Status written = co_await sink(std::move(whole));
      if (!written) co_return written;
    }
  }

  // The body ended. An upstream that sends no "[DONE]" still ends a whole answer with a finish
  // reason; anything else broke off.
  if (!stored && !transcript.error() && !transcript.complete()) {
    proxy_.metrics_.CountUpstreamError();
    proxy_.metrics_.CountFailedTurn();
    co_return MakeError(ErrorKind::kUpstream,
                        "upstream stream ended before the answer was complete");
  }
  if (!stored && !transcript.error()) {
    const auto upstream_time = std::chrono::steady_clock::now() - asked_at_;
    proxy_.metrics_.ObserveUpstream(std::chrono::duration<double>(upstream_time).count());
    Status committed = co_await Finish(transcript.answer(), upstream_time);
    if (!committed) co_return committed;
  }
  if (!pending.empty()) {
    Status written = co_await sink(std::move(pending));
    if (!written) co_return written;
  }
  co_return Ok();
}

}  // namespace staple::chat
