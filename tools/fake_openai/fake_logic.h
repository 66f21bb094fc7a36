#pragma once

// The behaviour of fake_openai without any I/O: fault markers, the tool call trigger, the
// deterministic echo reply, the chat.completion objects and SSE events it sends, and the
// thread-safe request log and counters behind its /_fake endpoints. fake_server.cpp only moves
// bytes according to what this decides.
//
// Answers. A chat request is answered "echo(N): <content of the last user message>", N being the
// number of messages, except in two cases:
//   - the last message is a `tool` message: "tool result: <its content>", so that a test sees the
//     tool's output reach the model;
//   - the last message is a user message holding the trigger TOOL:<name>, optionally followed
//     (after spaces) by a JSON object of arguments, e.g. `TOOL:get_weather {"city":"Paris"}`, and
//     <name> is the `function.name` of one of the request's `tools` (and `tool_choice` is not
//     "none"): the answer is one call of that function, content null, finish_reason
//     "tool_calls", arguments the JSON object in compact form ("{}" without one), id "call_" and
//     16 hex digits derived from the message count, the name and the arguments (the same request
//     always gets the same id). Streamed: the role chunk, a tool_calls delta (index 0) with id,
//     type and name and empty arguments, then the arguments in at least two fragments, the finish
//     chunk. <name> is a run of [A-Za-z0-9_-]; the first offered name wins; a name not offered
//     leaves the trigger as plain text (echoed).
// The request log (GET /_fake/requests) keeps each body verbatim, so a test reads the `messages`
// the upstream saw by parsing the body of the last POST /v1/chat/completions.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace staple::fake {

// Faults requested by a client. Markers may appear anywhere in the last user message or in the
// `X-Fake-Fault` header, several at once, separated by anything that is not part of a marker:
//   FAULT:status=NNN             answer NNN with an OpenAI error body
//   FAULT:invalid-json           answer 200 with a body that is not JSON
//   FAULT:drop                   close the connection without answering
//   FAULT:hang                   never answer; keep reading until the client closes
//   FAULT:sleep=MS               answer normally after MS milliseconds
//   FAULT:flaky=KEY              503 for the first request carrying KEY, normal afterwards
//   FAULT:stream-drop-after=K    streaming only: close after K content chunks (for a tool call:
//                                the tool_calls deltas)
//   FAULT:first-token-delay=MS   streaming only: the headers at once, the first event MS later
//   FAULT:first-token-delay-percent=P   ... for P % of the requests only (drawn at random)
// KEY is a run of [A-Za-z0-9_.-]. Unknown or malformed markers are ignored.
// PUT /_fake/fault with markers as its body applies them to every later /v1 request (a failing
// upstream on demand) until DELETE /_fake/fault.
struct Fault {
  bool drop = false;
  bool hang = false;
  bool invalid_json = false;
  std::optional<int> status;
  std::chrono::milliseconds sleep{0};
  std::vector<std::string> flaky_keys;
  std::optional<std::size_t> stream_drop_after;
  std::chrono::milliseconds first_token_delay{0};
  int first_token_delay_percent = 100;
};

// Adds the markers found in `text` to `fault` (sleep values add up).
void ParseFaultMarkers(std::string_view text, Fault& fault);

// Number of Unicode code points in UTF-8 `text` (continuation bytes are not counted).
std::size_t CountUtf8Chars(std::string_view text);

// Splits UTF-8 `text` into min(pieces, chars) parts of nearly equal character counts, cutting only
// between characters. Returns one (possibly empty) part when `text` is empty or pieces < 1.
std::vector<std::string> SplitUtf8(std::string_view text, int pieces);

// Body of an OpenAI-style error: {"error":{"message","type","code":null}}.
std::string ErrorBody(std::string_view message, std::string_view type);

// The function call the fake answers with (see the TOOL: trigger above).
struct ToolCall {
  std::string id;         // "call_" + 16 hex digits
  std::string name;       // one of the offered tools
  std::string arguments;  // a JSON object as text
};

// The first TOOL:<name> trigger of `text` whose name is in `offered`, with its arguments; the
// call's id is left empty. Nothing when there is no such trigger.
std::optional<ToolCall> FindToolTrigger(std::string_view text,
                                        const std::set<std::string, std::less<>>& offered);

// A validated POST /v1/chat/completions request and the answer it deserves.
struct ChatPlan {
  std::string model;
  bool stream = false;
  bool include_usage = false;
  std::string reply;  // "echo(N): <last user content>" or "tool result: <content>"; unused when
                      // tool_call is set
  std::optional<ToolCall> tool_call;  // answer with this call instead of text
  std::size_t prompt_tokens = 0;
  std::size_t completion_tokens = 0;
  Fault fault;  // markers of the last user message (the header's are added by the caller)
};

// Parses and validates a chat request body. On failure returns the error message for a 400.
struct ChatParse {
  std::optional<ChatPlan> plan;
  std::string error;
};
ChatParse ParseChatRequest(std::string_view body);

// The complete non-streaming `chat.completion` response body.
std::string CompletionBody(const ChatPlan& plan, std::string_view id, std::int64_t created);

// The SSE events of a streamed answer, each "data: ...\n\n": the role chunk, the content chunks
// (for a tool call: the tool_calls deltas, `chunks` or at least two fragments of arguments), the
// finish chunk, the usage chunk when asked for, and "data: [DONE]".
struct StreamEvents {
  std::vector<std::string> events;
  std::size_t first_content = 1;  // index of the first content event
  std::size_t content_count = 0;  // number of content events
};
StreamEvents BuildStreamEvents(const ChatPlan& plan, std::string_view id, std::int64_t created,
                               int chunks);

// Body of GET /v1/models.
const std::string& ModelsBody();

// Body of GET /v1/models/{id} for one of ModelsBody()'s models; std::nullopt for another id.
std::optional<std::string> ModelBody(std::string_view id);

// POST /v1/embeddings: `input` a string or a list of strings, `model`, `encoding_format` "float"
// (the default here) or "base64" (little-endian float32s, what the openai SDKs ask for). Each
// input gets 8 numbers derived from its bytes, so equal inputs embed equally; usage counts a token
// per four bytes. On a bad body: the message for a 400 in `error`.
struct EmbeddingsReply {
  std::string body;
  std::string error;
};
EmbeddingsReply EmbeddingsBody(std::string_view request_body);

// Any other /v1 call: what arrived, so that a test sees what a gateway forwarded, e.g.
// {"object":"fake.echo","method":"POST","target":"/v1/moderations?x=1","content_type":"...",
//  "body_bytes":12,"body_head":"<its first 64 bytes>"}. (Headers, Authorization included, are in
// the request log, GET /_fake/requests: an echo never hands a key back.)
std::string EchoBody(std::string_view method, std::string_view target,
                     std::string_view content_type, std::string_view body);

// One request as received on /v1/*.
struct RecordedRequest {
  std::string method;
  std::string path;
  std::vector<std::pair<std::string, std::string>> headers;  // lower-case names, in order
  std::string body;
};

// The last `capacity` requests, oldest first. All members are thread-safe.
class RequestLog {
 public:
  explicit RequestLog(std::size_t capacity) : capacity_(capacity) {}

  bool enabled() const { return capacity_ > 0; }
  void Add(RecordedRequest request);
  void Clear();
  // JSON array of {method, path, headers: {name: value}, body}; repeated headers are joined
  // with ", ".
  std::string ToJson() const;

 private:
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<RecordedRequest> requests_;  // guarded by mutex_
};

// Counters behind GET /_fake/stats. Lock-free; read as a snapshot per field.
struct Stats {
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> streams_started{0};
  std::atomic<std::uint64_t> streams_completed{0};
  std::atomic<std::uint64_t> streams_aborted{0};  // the client closed before the end
  std::atomic<std::uint64_t> streams_dropped{0};  // FAULT:stream-drop-after closed it
  std::string ToJson() const;
};

// Remembers which FAULT:flaky keys were already seen. Thread-safe.
class FlakyKeys {
 public:
  // True when `key` had not been seen before (and records it).
  bool FirstSeen(const std::string& key);

 private:
  std::mutex mutex_;
  std::set<std::string> seen_;  // guarded by mutex_
};

}  // namespace staple::fake
