#include "fake_logic.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <charconv>

namespace staple::fake {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kMarker = "FAULT:";
constexpr std::string_view kToolMarker = "TOOL:";

// Client text may hold anything; never let a bad byte turn into an exception while answering.
std::string Dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

bool IsNameChar(char c) { return (c >= 'a' && c <= 'z') || c == '-'; }

bool IsValueChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

bool IsToolNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

// Length of the JSON object starting at text[0] == '{' (braces inside strings do not count), or
// nothing when it does not close.
std::optional<std::size_t> ObjectLength(std::string_view text) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{') {
      ++depth;
    } else if (c == '}' && --depth == 0) {
      return i + 1;
    }
  }
  return std::nullopt;
}

// FNV-1a: a stable hash, so that the same request always gets the same call id.
std::uint64_t Fnv1a(std::string_view text) {
  std::uint64_t hash = 14695981039346656037ull;
  for (char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

std::string CallId(std::size_t message_count, const ToolCall& call) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::uint64_t hash =
      Fnv1a(std::to_string(message_count) + '\n' + call.name + '\n' + call.arguments);
  std::string id = "call_";
  for (int shift = 60; shift >= 0; shift -= 4) id += kHex[(hash >> shift) & 0xF];
  return id;
}

// The function names of the request's `tools` (malformed entries are skipped).
std::set<std::string, std::less<>> OfferedTools(const Json& request) {
  std::set<std::string, std::less<>> names;
  auto tools = request.find("tools");
  if (tools == request.end() || !tools->is_array()) return names;
  for (const auto& tool : *tools) {
    if (!tool.is_object()) continue;
    auto function = tool.find("function");
    if (function == tool.end() || !function->is_object()) continue;
    auto name = function->find("name");
    if (name != function->end() && name->is_string()) names.insert(name->get<std::string>());
  }
  return names;
}

template <typename T>
std::optional<T> ParseNumber(std::string_view text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// The text of a message's `content`: a string, or the text parts of an array of parts.
std::string ContentText(const Json& message) {
  auto it = message.find("content");
  if (it == message.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  std::string text;
  if (it->is_array()) {
    for (const auto& part : *it) {
      if (!part.is_object()) continue;
      auto type = part.find("type");
      auto part_text = part.find("text");
      if (type != part.end() && *type == "text" && part_text != part.end() &&
          part_text->is_string()) {
        text += part_text->get<std::string>();
      }
    }
  }
  return text;
}

Json Usage(const ChatPlan& plan) {
  return Json{{"prompt_tokens", plan.prompt_tokens},
              {"completion_tokens", plan.completion_tokens},
              {"total_tokens", plan.prompt_tokens + plan.completion_tokens}};
}

Json ChunkObject(const ChatPlan& plan, std::string_view id, std::int64_t created) {
  return Json{
      {"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", plan.model}};
}

std::string Event(const Json& json) { return "data: " + Dump(json) + "\n\n"; }

}  // namespace

void ParseFaultMarkers(std::string_view text, Fault& fault) {
  for (std::size_t pos = text.find(kMarker); pos != std::string_view::npos;
       pos = text.find(kMarker, pos)) {
    pos += kMarker.size();
    std::size_t name_end = pos;
    while (name_end < text.size() && IsNameChar(text[name_end])) ++name_end;
    std::string_view name = text.substr(pos, name_end - pos);
    std::string_view value;
    std::size_t end = name_end;
    if (end < text.size() && text[end] == '=') {
      std::size_t value_end = end + 1;
      while (value_end < text.size() && IsValueChar(text[value_end])) ++value_end;
      value = text.substr(end + 1, value_end - end - 1);
      end = value_end;
    }
    pos = end;

    if (name == "drop") {
      fault.drop = true;
    } else if (name == "hang") {
      fault.hang = true;
    } else if (name == "invalid-json") {
      fault.invalid_json = true;
    } else if (name == "status") {
      auto status = ParseNumber<int>(value);
      if (status && *status >= 100 && *status <= 599) fault.status = *status;
    } else if (name == "sleep") {
      auto ms = ParseNumber<std::int64_t>(value);
      if (ms && *ms >= 0) fault.sleep += std::chrono::milliseconds(*ms);
    } else if (name == "flaky") {
      if (!value.empty()) fault.flaky_keys.emplace_back(value);
    } else if (name == "first-token-delay") {
      auto ms = ParseNumber<std::int64_t>(value);
      if (ms && *ms >= 0) fault.first_token_delay = std::chrono::milliseconds(*ms);
    } else if (name == "first-token-delay-percent") {
      auto percent = ParseNumber<int>(value);
      if (percent && *percent >= 0 && *percent <= 100) fault.first_token_delay_percent = *percent;
    } else if (name == "stream-drop-after") {
      auto count = ParseNumber<std::size_t>(value);
      if (count) fault.stream_drop_after = *count;
    }
  }
}

std::size_t CountUtf8Chars(std::string_view text) {
  return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }));
}

std::vector<std::string> SplitUtf8(std::string_view text, int pieces) {
  // Byte offsets where each character starts, plus the end.
  std::vector<std::size_t> starts;
  starts.reserve(text.size() + 1);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) starts.push_back(i);
  }
  const std::size_t chars = starts.size();
  starts.push_back(text.size());
  if (chars == 0 || pieces < 1) return {std::string(text)};

  const std::size_t count = std::min(static_cast<std::size_t>(pieces), chars);
  std::vector<std::string> parts;
  parts.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    std::size_t from = starts[i * chars / count];
    std::size_t to = starts[(i + 1) * chars / count];
    parts.emplace_back(text.substr(from, to - from));
  }
  return parts;
}

std::string ErrorBody(std::string_view message, std::string_view type) {
  return Dump(Json{{"error", {{"message", message}, {"type", type}, {"code", nullptr}}}});
}

std::optional<ToolCall> FindToolTrigger(std::string_view text,
                                        const std::set<std::string, std::less<>>& offered) {
  for (std::size_t pos = text.find(kToolMarker); pos != std::string_view::npos;
       pos = text.find(kToolMarker, pos)) {
    pos += kToolMarker.size();
    std::size_t name_end = pos;
    while (name_end < text.size() && IsToolNameChar(text[name_end])) ++name_end;
    const std::string_view name = text.substr(pos, name_end - pos);
    pos = name_end;
    if (name.empty() || !offered.contains(name)) continue;

    ToolCall call{{}, std::string(name), "{}"};
    std::size_t start = name_end;
    while (start < text.size() && (text[start] == ' ' || text[start] == '\t')) ++start;
    if (start < text.size() && text[start] == '{') {
      if (auto length = ObjectLength(text.substr(start))) {
        Json arguments = Json::parse(text.substr(start, *length), nullptr,
                                     /*allow_exceptions=*/false);
        if (arguments.is_object()) call.arguments = Dump(arguments);
      }
    }
    return call;
  }
  return std::nullopt;
}

ChatParse ParseChatRequest(std::string_view body) {
  Json request = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) {
    return {std::nullopt, "We could not parse the JSON body of your request."};
  }
  if (!request.is_object()) return {std::nullopt, "The request body must be a JSON object."};
  auto messages = request.find("messages");
  if (messages == request.end()) {
    return {std::nullopt, "Missing required parameter: 'messages'."};
  }
  if (!messages->is_array() || messages->empty()) {
    return {std::nullopt, "Invalid 'messages': expected a non-empty array."};
  }

  ChatPlan plan;
  std::size_t prompt_chars = 0;
  std::string last_user;
  for (const auto& message : *messages) {
    const Json* role = message.is_object() && message.contains("role") ? &message["role"] : nullptr;
    if (role == nullptr || !role->is_string()) {
      return {std::nullopt, "Invalid 'messages': every message needs a string 'role'."};
    }
    std::string content = ContentText(message);
    prompt_chars += CountUtf8Chars(content);
    if (*role == "user") last_user = std::move(content);
  }
  const Json& last_role = messages->back()["role"];

  auto model = request.find("model");
  plan.model = model != request.end() && model->is_string() ? model->get<std::string>()
                                                            : std::string("fake-model");
  auto stream = request.find("stream");
  plan.stream = stream != request.end() && stream->is_boolean() && stream->get<bool>();
  auto options = request.find("stream_options");
  if (options != request.end() && options->is_object()) {
    auto usage = options->find("include_usage");
    plan.include_usage = usage != options->end() && usage->is_boolean() && usage->get<bool>();
  }

  ParseFaultMarkers(last_user, plan.fault);
  std::size_t answer_chars = 0;
  auto tool_choice = request.find("tool_choice");
  const bool tools_allowed = tool_choice == request.end() || *tool_choice != "none";
  if (last_role == "user" && tools_allowed) {
    plan.tool_call = FindToolTrigger(last_user, OfferedTools(request));
  }
  if (plan.tool_call) {
    plan.tool_call->id = CallId(messages->size(), *plan.tool_call);
    answer_chars = CountUtf8Chars(plan.tool_call->name) + CountUtf8Chars(plan.tool_call->arguments);
  } else {
    if (last_role == "tool") {
      plan.reply = "tool result: " + ContentText(messages->back());
    } else {
      plan.reply = "echo(" + std::to_string(messages->size()) + "): " + last_user;
    }
    answer_chars = CountUtf8Chars(plan.reply);
  }
  plan.prompt_tokens = (prompt_chars + 3) / 4;
  plan.completion_tokens = (answer_chars + 3) / 4;
  return {std::move(plan), {}};
}

std::string CompletionBody(const ChatPlan& plan, std::string_view id, std::int64_t created) {
  Json message{{"role", "assistant"}, {"content", plan.reply}};
  std::string_view finish_reason = "stop";
  if (plan.tool_call) {
    const ToolCall& call = *plan.tool_call;
    message["content"] = nullptr;
    message["tool_calls"] =
        Json::array({Json{{"id", call.id},
                          {"type", "function"},
                          {"function", {{"name", call.name}, {"arguments", call.arguments}}}}});
    finish_reason = "tool_calls";
  }
  Json choice{{"index", 0}, {"message", std::move(message)}, {"finish_reason", finish_reason}};
  return Dump(Json{{"id", id},
                   {"object", "chat.completion"},
                   {"created", created},
                   {"model", plan.model},
                   {"choices", Json::array({std::move(choice)})},
                   {"usage", Usage(plan)}});
}

StreamEvents BuildStreamEvents(const ChatPlan& plan, std::string_view id, std::int64_t created,
                               int chunks) {
  StreamEvents out;
  auto with_delta = [&](Json delta, Json finish_reason) {
    Json chunk = ChunkObject(plan, id, created);
    chunk["choices"] = Json::array({Json{
        {"index", 0}, {"delta", std::move(delta)}, {"finish_reason", std::move(finish_reason)}}});
    return Event(chunk);
  };

  if (plan.tool_call) {
    // As OpenAI streams a call: id, type and name first, then the arguments piece by piece, each
    // delta naming the call by its index.
    const ToolCall& call = *plan.tool_call;
    auto call_delta = [](Json fields) {
      fields["index"] = 0;
      return Json{{"tool_calls", Json::array({std::move(fields)})}};
    };
    out.events.push_back(with_delta(Json{{"role", "assistant"}, {"content", nullptr}}, nullptr));
    out.first_content = out.events.size();
    out.events.push_back(
        with_delta(call_delta(Json{{"id", call.id},
                                   {"type", "function"},
                                   {"function", {{"name", call.name}, {"arguments", ""}}}}),
                   nullptr));
    for (auto& piece : SplitUtf8(call.arguments, std::max(chunks, 2))) {
      out.events.push_back(
          with_delta(call_delta(Json{{"function", {{"arguments", std::move(piece)}}}}), nullptr));
    }
    out.content_count = out.events.size() - out.first_content;
    out.events.push_back(with_delta(Json::object(), "tool_calls"));
  } else {
    out.events.push_back(with_delta(Json{{"role", "assistant"}, {"content", ""}}, nullptr));
    out.first_content = out.events.size();
    for (auto& piece : SplitUtf8(plan.reply, chunks)) {
      out.events.push_back(with_delta(Json{{"content", std::move(piece)}}, nullptr));
    }
    out.content_count = out.events.size() - out.first_content;
    out.events.push_back(with_delta(Json::object(), "stop"));
  }
  if (plan.include_usage) {
    Json chunk = ChunkObject(plan, id, created);
    chunk["choices"] = Json::array();
    chunk["usage"] = Usage(plan);
    out.events.push_back(Event(chunk));
  }
  out.events.emplace_back("data: [DONE]\n\n");
  return out;
}

const std::string& ModelsBody() {
  static const std::string body = [] {
    auto model = [](const char* id) {
      return Json{{"id", id}, {"object", "model"}, {"created", 0}, {"owned_by", "staple"}};
    };
    return Dump(Json{{"object", "list"}, {"data", {model("fake-model"), model("gpt-4o-mini")}}});
  }();
  return body;
}

std::optional<std::string> ModelBody(std::string_view id) {
  if (id != "fake-model" && id != "gpt-4o-mini") return std::nullopt;
  return Dump(Json{{"id", id}, {"object", "model"}, {"created", 0}, {"owned_by", "staple"}});
}

EmbeddingsReply EmbeddingsBody(std::string_view request_body) {
  EmbeddingsReply reply;
  const Json request = Json::parse(request_body, nullptr, false);
  if (!request.is_object()) {
    reply.error = "the body must be a JSON object";
    return reply;
  }
  std::vector<std::string> inputs;
  const auto input = request.find("input");
  if (input != request.end() && input->is_string()) {
    inputs.push_back(input->get<std::string>());
  } else if (input != request.end() && input->is_array() && !input->empty()) {
    for (const auto& item : *input) {
      if (!item.is_string()) {
        reply.error = "input: expected strings";
        return reply;
      }
      inputs.push_back(item.get<std::string>());
    }
  } else {
    reply.error = "input: expected a string or a non-empty list of strings";
    return reply;
  }
  const auto model = request.find("model");
  if (model == request.end() || !model->is_string()) {
    reply.error = "model: required";
    return reply;
  }
  const std::string format = request.value("encoding_format", std::string("float"));
  if (format != "float" && format != "base64") {
    reply.error = "encoding_format: expected float or base64";
    return reply;
  }
  Json data = Json::array();
  std::size_t tokens = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    std::array<float, 8> vector{};
    for (std::size_t b = 0; b < inputs[i].size(); ++b) {
      vector[b % vector.size()] +=
          static_cast<float>(static_cast<unsigned char>(inputs[i][b])) / 256;
    }
    tokens += (inputs[i].size() + 3) / 4;
    Json embedding;
    if (format == "float") {
      embedding = Json::array();
      for (const float value : vector) embedding.push_back(value);
    } else {
      // Little-endian float32s (this machine's order), base64 as OpenAI sends them.
      std::string bytes(reinterpret_cast<const char*>(vector.data()), sizeof vector);
      std::string encoded(4 * ((bytes.size() + 2) / 3) + 1, '\0');
      const int length = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(encoded.data()),
                                         reinterpret_cast<const unsigned char*>(bytes.data()),
                                         static_cast<int>(bytes.size()));
      encoded.resize(static_cast<std::size_t>(length));
      embedding = encoded;
    }
    data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", std::move(embedding)}});
  }
  reply.body = Dump(Json{{"object", "list"},
                         {"data", std::move(data)},
                         {"model", *model},
                         {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}});
  return reply;
}

std::string EchoBody(std::string_view method, std::string_view target,
                     std::string_view content_type, std::string_view body) {
  return Dump(Json{{"object", "fake.echo"},
                   {"method", method},
                   {"target", target},
                   {"content_type", content_type},
                   {"body_bytes", body.size()},
                   {"body_head", body.substr(0, 64)}});
}

void RequestLog::Add(RecordedRequest request) {
  if (capacity_ == 0) return;
  std::lock_guard lock(mutex_);
  if (requests_.size() == capacity_) requests_.pop_front();
  requests_.push_back(std::move(request));
}

void RequestLog::Clear() {
  std::lock_guard lock(mutex_);
  requests_.clear();
}

std::string RequestLog::ToJson() const {
  Json out = Json::array();
  std::lock_guard lock(mutex_);
  for (const auto& request : requests_) {
    Json headers = Json::object();
    for (const auto& [name, value] : request.headers) {
      auto it = headers.find(name);
      if (it == headers.end()) {
        headers[name] = value;
      } else {
        *it = it->get<std::string>() + ", " + value;
      }
    }
    out.push_back(Json{{"method", request.method},
                       {"path", request.path},
                       {"headers", std::move(headers)},
                       {"body", request.body}});
  }
  return Dump(out);
}

std::string Stats::ToJson() const {
  return Dump(Json{{"requests", requests.load()},
                   {"streams_started", streams_started.load()},
                   {"streams_completed", streams_completed.load()},
                   {"streams_aborted", streams_aborted.load()},
                   {"streams_dropped", streams_dropped.load()}});
}

bool FlakyKeys::FirstSeen(const std::string& key) {
  std::lock_guard lock(mutex_);
  return seen_.insert(key).second;
}

}  // namespace staple::fake
