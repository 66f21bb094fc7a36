#pragma once

// The Responses API on a Chat Completions upstream: plain functions and one translator, no I/O.
// api/responses_handlers.cpp runs them around the turn pipeline (chat/turn.h).
//
//   request  ParseResponsesRequest: the client's POST /v1/responses body, validated; every field
//            it does not support is refused (a 400 naming it), never dropped
//   context  the stored items (a previous_response_id chain or a conversation), ContextStart
//            for the history window (truncation)
//   upstream BuildChatBody: instructions, context items and input items as chat messages, tools,
//            tool_choice, text.format → response_format, max_output_tokens…
//   answer   ReadChatCompletion (a whole answer) or ResponseEventStream (a streamed one) give the
//            output items, status and usage; ResponseObject the response the client gets

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/context_window.h"
#include "chat/token_gate.h"
#include "common/result.h"

namespace staple::chat::responses {

using Json = nlohmann::ordered_json;

// A 400 for the client, in OpenAI's shape {"error": {"message", "type": "invalid_request_error",
// "param", "code"}}.
struct RequestError {
  std::string message;
  std::string param;  // the offending field, e.g. "input[2].type"; "" when none
  std::string code;   // e.g. "unsupported_parameter"; "" for null
};

// A new id: `prefix` ("resp", "msg", "fc", "conv", …), "_", then 48 lower-case hex digits: 12 of
// the creation time in milliseconds (later ids sort after earlier ones, which keeps the store's
// id indexes growing at one edge) and 36 from a cryptographically secure source (ids are not
// guessable).
std::string NewId(std::string_view prefix);

// Normalizes client-given items (POST /v1/responses `input`, POST /v1/conversations `items`,
// POST /v1/conversations/{id}/items `items`) into the items that are stored and shown:
//   - a message: {"type": "message", "id", "role", "content": [parts], "status": "completed"};
//     `content` given as a string becomes [{"type": "input_text", "text"}] (for an assistant,
//     [{"type": "output_text", "text", "annotations": []}]); roles user, assistant, system,
//     developer; parts input_text (user/system/developer), output_text and refusal (assistant);
//   - {"type": "function_call", "id", "call_id", "name", "arguments", "status": "completed"};
//   - {"type": "function_call_output", "id", "call_id", "output", "status": "completed"}
//     (`output` a string, or a list of input_text parts whose texts are joined);
// keeping a client's "id" and giving items without one a new id ("msg", "fc", "fco"). A message
// may leave out "type" (EasyInputMessage: {role, content}). Other members of an item or part
// (a client's "status", "phase", "logprobs", "prompt_cache_breakpoint"…) are not stored. Anything
// else (other item types such as item_reference or reasoning, other part types such as
// input_image, missing or mistyped fields) is a RequestError naming the field as
// `param_prefix` + "[i]…", e.g. "input[1].content[0].type".
std::optional<RequestError> NormalizeItems(const Json& items, std::string_view param_prefix,
                                           Json& normalized);

// A validated POST /v1/responses request.
struct ResponsesRequest {
  std::string model;
  Json input = Json::array();  // normalized items (NormalizeItems); a string input is one user
                               // message
  std::optional<std::string> instructions;
  std::string previous_response_id;  // "" for none
  std::string conversation_id;       // "" for none; {"id": …} and a plain string are accepted
  bool store = true;
  bool stream = false;
  Json tools = Json::array();  // as given: function tools only
  Json tool_choice = "auto";   // as given: "auto" | "none" | "required" | {"type": "function",
                               // "name"}
  std::optional<bool> parallel_tool_calls;
  std::optional<std::int64_t> max_output_tokens;
  std::optional<double> temperature;
  std::optional<double> top_p;
  Json metadata = Json::object();                // at most 16 string values
  Json text = {{"format", {{"type", "text"}}}};  // as given
  bool truncation_auto = false;                  // "auto"; "disabled" is the default
  std::string user;                              // "" for none
  // The text of the last user message of `input` ("" when there is none): the prompt the turn
  // log stores.
  std::string prompt_text;
};

// Parses and validates a request body. Any member given as null counts as not given (SDKs send
// null for "unset"). Accepted and ignored: `include` (an empty list), `reasoning` ({} or only null
// members), `service_tier` ("auto" or "default"), `background` (false), `stream_options` (an
// object), `prompt_cache_key` and `safety_identifier` (strings: hints that change no answer),
// `text.verbosity` ("medium", the default). `model` and `input` are required; a
// tool_choice {"type": "function", "name"} must name one of `tools`. Every other field not listed
// in ResponsesRequest, and every listed field of the wrong type or value, is a RequestError with
// `param` set (code "unsupported_parameter" for a field Staple does not support). Both
// previous_response_id and conversation → a RequestError. A body that is not a JSON object → a
// RequestError without param.
std::optional<RequestError> ParseResponsesRequest(std::string_view body, ResponsesRequest& parsed);

// What the history window and the upstream body need of one item of NormalizeItems' shape, read
// once. A stored context is read into these straight from the items' JSON texts (ReadContextItem:
// one pass, no JSON tree), which is most of what a chained request costs outside the database.
// The item's texts are kept only as the chat message they make (chat_json): a chain's items are
// kept in memory (ChainCache) and copied into the next response's chain.
struct ContextItem {
  enum class Kind : std::uint8_t { kOther, kMessage, kFunctionCall, kFunctionCallOutput };
  Kind kind = Kind::kOther;    // from "type"; kOther for any other type (it adds no chat message)
  std::string role;            // a message's
  std::size_t chars = 0;       // characters the history window counts: a message's text (its
                               // parts' `text` and `refusal` joined), a function call output's
                               // `output`, a function call's `name` and `arguments`
  std::size_t text_bytes = 0;  // bytes of a message's text or a function call output's `output`
                               // (the prompt token estimate counts them)
  // The item as Chat Completions JSON text, serialized once (BuildChatBody joins these instead of
  // serializing a chained request's whole context again): for a message, its chat message
  // (`{"role":…,"content":…`, role "developer" as "system") and for a function call output its
  // "tool" message (`{"role":"tool","tool_call_id":…,"content":…`), both without the closing
  // brace (function calls after an assistant message join it as its `tool_calls`); for a
  // function call, its tool call object (`{"id":…,"type":"function","function":{"name":…,
  // "arguments":…}}`); "" for kOther.
  std::string chat_json;
  bool operator==(const ContextItem&) const = default;
};

// Stored items that come before a response's input: the window of a previous response's chain
// or of a conversation (store::ItemWindow), read into ContextItems.
struct StoredContext {
  std::vector<ContextItem> items;  // oldest first
  bool has_more = false;           // older items exist that the window left out
};

// The ContextItem of an item tree. Members of the wrong type count as absent.
ContextItem ContextItemOf(const Json& item);

// The ContextItem of an item's JSON text, exactly what ContextItemOf makes of its tree, read
// without building one; std::nullopt when the text is not a JSON object.
std::optional<ContextItem> ReadContextItem(std::string_view json);

// How much of `context` (stored items, oldest first) goes upstream before the new input: the
// index of the first item kept. The most recent whole turns (a turn starts at a user message
// item) that fit `limits` together with the new input: at most limits.max_messages items and
// limits.max_chars characters of text (context and input counted together; 0 = no limit; the new
// input always goes, whatever it costs). Items before the first user message (a leading developer
// message, say) count as a turn of their own. Items that are not what NormalizeItems makes count
// 0 characters. `fits` is set to whether nothing had to be dropped (the result is 0).
std::size_t ContextStart(std::span<const ContextItem> context, const Json& input,
                         const WindowLimits& limits, bool& fits);

// The upstream's /chat/completions body: `model`; `messages` = instructions as a "system"
// message first, then the context items from `context_start`, then the input items (a message →
// a chat message with its parts' texts joined, role "developer" sent as "system", which every
// Chat Completions upstream knows; consecutive function_call items → one assistant message with
// `tool_calls` (joined to a directly preceding assistant message); a function_call_output → a
// "tool" message); `tools` (as chat tools: {"type": "function", "function": {name, description,
// parameters, strict}}), `tool_choice`, `parallel_tool_calls`, `max_tokens` (from
// max_output_tokens), `temperature`, `top_p`, `user`, `response_format` (from text.format:
// json_schema → {"type": "json_schema", "json_schema": {name, schema, strict, description}},
// json_object → {"type": "json_object"}, text → none); with `stream`, "stream": true and
// "stream_options": {"include_usage": true}. `estimate` receives the prompt estimate
// (EstimatePromptTokens of the messages) and max_output_tokens. tool_choice and
// parallel_tool_calls go only with tools (OpenAI refuses them alone); metadata and store stay in
// Staple; empty instructions add no message.
std::string BuildChatBody(const ResponsesRequest& request, std::span<const ContextItem> context,
                          std::size_t context_start, bool stream, TokenEstimate& estimate);

// What the upstream answered, as the Responses API shows it.
struct ResponseOutput {
  // Items, each with a new id: a "message" (when the answer has text or a refusal, or has none
  // of text, refusal and tool calls) with an output_text part (unless the answer is only a
  // refusal) and a refusal part (the upstream message's `refusal`, when there is one); then a
  // "function_call" per tool call, its call_id the upstream's tool call id.
  Json output = Json::array();
  std::string status = "completed";           // "incomplete" when finish_reason was "length" or
                                              // "content_filter"
  Json incomplete_details = nullptr;          // {"reason": "max_output_tokens" | "content_filter"}
  std::string model;                          // the upstream's `model`, "" when absent
  std::string text;                           // the output text (for the turn log)
  std::optional<std::int64_t> input_tokens;   // usage.prompt_tokens
  std::optional<std::int64_t> output_tokens;  // usage.completion_tokens
};

// A whole chat.completion body. Errors: kUpstream when it is not one (not JSON, no choices…).
// Usage counts beyond 64-bit signed saturate (as the turn pipeline reads them).
Result<ResponseOutput> ReadChatCompletion(std::string_view body);

// What ReadChatCompletion gives for an answer whose choices[0].message is an object holding
// nothing but text (no tool_calls, no refusal), from what the turn pipeline already read of it
// (ChatAnswer): the upstream's `model` ("" when absent), choices[0].finish_reason ("" when not a
// string), the message's text ("" when not a string) and the usage counts. The answer is not
// parsed a second time.
ResponseOutput PlainAnswerOutput(std::string model, std::string_view finish_reason,
                                 std::string text, std::optional<std::int64_t> prompt_tokens,
                                 std::optional<std::int64_t> completion_tokens);

// The response object: id, "object": "response", created_at, status, error (null),
// incomplete_details, instructions, max_output_tokens, model (the output's model, else the
// request's), output, parallel_tool_calls, previous_response_id, conversation ({"id"} or null),
// reasoning {"effort": null, "summary": null}, store, temperature, text, tool_choice, tools,
// top_p, truncation, usage ({input_tokens, input_tokens_details: {cached_tokens: 0},
// output_tokens, output_tokens_details: {reasoning_tokens: 0}, total_tokens}; null when the
// upstream reported none), user, metadata. `output` null: status "in_progress" and no output
// (the first events of a stream).
Json ResponseObject(const ResponsesRequest& request, std::string_view id, std::int64_t created_at,
                    const ResponseOutput* output);

// Where ResponseObjectText wrote the output array ([array_begin, array_end) of its text) and
// each output item ([begin, end) each, in order).
struct OutputSpans {
  std::size_t array_begin = 0;
  std::size_t array_end = 0;
  std::vector<std::pair<std::size_t, std::size_t>> items;
};

// ResponseObject(…).dump(-1, ' ', false, error_handler_t::replace), written straight as text:
// the tree's construction copied every member (the output items included) and was the largest
// single cost of recording a turn. The unit tests and the fuzz target check both give the same.
// `spans`, when given, gets where the output went.
std::string ResponseObjectText(const ResponsesRequest& request, std::string_view id,
                               std::int64_t created_at, const ResponseOutput* output,
                               OutputSpans* spans = nullptr);

// How the store keeps the object of a response that is in no conversation: with an empty output
// array, since its output items are stored as item rows anyway (a chained turn writes a tenth
// fewer bytes; bench/state_layout.py). `object` is ResponseObjectText's text, `spans` where it put
// the output.
std::string WithoutOutput(std::string_view object, const OutputSpans& spans);

// Whether a stored response object's output is an empty array: for a response in no conversation
// that means it was stored WithoutOutput, and its output items are to be read back.
bool StoredOutputIsEmpty(std::string_view stored);

// A stored object with `items` (the output items' JSON texts, in order) as its output when its
// output is an empty array (the inverse of WithoutOutput); unchanged when it is not.
std::string WithStoredOutput(std::string stored, std::span<const std::string> items);

// The Responses event stream of a streamed answer, made from the upstream's chat.completion.chunk
// events. Each call returns SSE text: for each event "event: <type>\ndata: <json>\n\n", the json
// carrying "type" and a "sequence_number" that counts from 0 across the whole stream.
class ResponseEventStream {
 public:
  ResponseEventStream(ResponsesRequest request, std::string id, std::int64_t created_at);

  // response.created and response.in_progress.
  std::string Start();

  // One upstream event's data (a chat.completion.chunk's JSON; the caller skips "[DONE]"):
  // response.output_item.added / response.content_part.added before the first text of the
  // message, response.output_text.delta per text delta (response.refusal.delta in a refusal part
  // for a `refusal` delta), response.output_item.added and
  // response.function_call_arguments.delta for tool calls (by their `index`), usage and model
  // remembered. Errors: kUpstream for data that is not a chunk.
  Result<std::string> Add(std::string_view chunk_data);

  // The answer ended whole: response.output_text.done (or response.refusal.done),
  // response.content_part.done, response.function_call_arguments.done and
  // response.output_item.done for what is open. After it output() is final.
  std::string Finish();

  // The output so far (final after Finish).
  const ResponseOutput& output() const { return output_; }

  // response.completed with the whole response object (call after Finish, once it is stored);
  // response.incomplete instead when output().status is "incomplete", as OpenAI does.
  std::string Completed();

  // response.failed: the response object with status "failed" and error {code, message}
  // (code "server_error", or "timeout" for kTimeout).
  std::string Failed(const Error& error);

 private:
  std::string Event(std::string_view type, Json payload);
  // An event whose only member besides type and sequence_number is "response": `response`, the
  // response object's text (ResponseObjectText).
  std::string ResponseEvent(std::string_view type, const std::string& response);
  // Adds an empty part ("output_text" or "refusal") to the assistant message, adding the message
  // first when there is none: output_item.added and content_part.added.
  std::string OpenPart(std::string_view type);

  ResponsesRequest request_;
  std::string id_;
  std::int64_t created_at_;
  std::int64_t sequence_ = 0;
  ResponseOutput output_;
  // Translation state, the implementation's own.
  std::optional<std::size_t> message_index_;  // index in output_.output of the open message
  std::optional<std::size_t> text_part_;      // index in its content of the output_text part
  std::optional<std::size_t> refusal_part_;   // index in its content of the refusal part
  struct OpenCall {
    std::int64_t upstream_index = 0;
    std::size_t output_index = 0;
  };
  std::vector<OpenCall> calls_;
  bool finished_ = false;
};

}  // namespace staple::chat::responses
