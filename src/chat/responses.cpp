#include "chat/responses.h"

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <utility>

#include "chat/sax_scan.h"
#include "common/json_text.h"
#include "common/secure_random.h"

namespace staple::chat::responses {
namespace {

// RequestError codes, as OpenAI names them.
constexpr char kUnsupported[] = "unsupported_parameter";
constexpr char kMissing[] = "missing_required_parameter";
constexpr char kInvalidType[] = "invalid_type";
constexpr char kInvalidValue[] = "invalid_value";

RequestError Refuse(std::string param, std::string message, std::string code) {
  return RequestError{std::move(message), std::move(param), std::move(code)};
}

RequestError Unsupported(const std::string& param) {
  return Refuse(param, "Staple does not support the parameter '" + param + "'.", kUnsupported);
}

RequestError Missing(const std::string& param) {
  return Refuse(param, "Missing required parameter: '" + param + "'.", kMissing);
}

RequestError WrongType(const std::string& param, std::string_view expected) {
  return Refuse(param, "Invalid type for '" + param + "': expected " + std::string(expected) + ".",
                kInvalidType);
}

RequestError WrongValue(const std::string& param, std::string_view why) {
  return Refuse(param, "Invalid value for '" + param + "': " + std::string(why) + ".",
                kInvalidValue);
}

// A member, or nullptr when it is absent or null: clients send null for "not given".
const Json* Given(const Json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

// `text` as a JSON string, appended to `out`.
void AppendJsonString(std::string& out, std::string_view text) { AppendJsonText(out, Json(text)); }

// A string member, "" when it is absent or not a string. Stored items were normalized when they
// were stored, but a store's record is not trusted to the point of undefined behaviour.
std::string Text(const Json& object, const char* key) {
  if (!object.is_object()) return {};
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// The text of a normalized item, as the history window counts it and a chat message carries it.
std::string ItemText(const Json& item) {
  const auto type = Text(item, "type");
  if (type == "message") {
    std::string text;
    const auto content = item.find("content");
    if (content == item.end() || !content->is_array()) return text;
    for (const auto& part : *content) text += Text(part, "text") + Text(part, "refusal");
    return text;
  }
  if (type == "function_call") return Text(item, "name") + Text(item, "arguments");
  if (type == "function_call_output") return Text(item, "output");
  return {};
}

// A part of a message, normalized into `out`.
std::optional<RequestError> NormalizePart(const Json& part, const std::string& role,
                                          const std::string& param, Json& out) {
  if (!part.is_object()) return WrongType(param, "an object");
  const Json* type = Given(part, "type");
  if (type == nullptr) return Missing(param + ".type");
  if (!type->is_string()) return WrongType(param + ".type", "a string");
  const auto type_name = type->get<std::string>();
  const bool assistant = role == "assistant";
  if (type_name == "input_text" || type_name == "output_text") {
    if ((type_name == "output_text") != assistant) {
      return WrongValue(param + ".type", assistant ? "assistant content is output_text or refusal"
                                                   : "this role's content is input_text");
    }
    const Json* text = Given(part, "text");
    if (text == nullptr) return Missing(param + ".text");
    if (!text->is_string()) return WrongType(param + ".text", "a string");
    out = {{"type", type_name}, {"text", *text}};
    if (assistant) {
      const Json* annotations = Given(part, "annotations");
      if (annotations != nullptr && !annotations->is_array()) {
        return WrongType(param + ".annotations", "an array");
      }
      out["annotations"] = annotations != nullptr ? *annotations : Json::array();
    }
    return std::nullopt;
  }
  if (type_name == "refusal" && assistant) {
    const Json* refusal = Given(part, "refusal");
    if (refusal == nullptr) return Missing(param + ".refusal");
    if (!refusal->is_string()) return WrongType(param + ".refusal", "a string");
    out = {{"type", "refusal"}, {"refusal", *refusal}};
    return std::nullopt;
  }
  return Refuse(
      param + ".type",
      "Staple does not support content parts of type '" + type_name + "' here (only text).",
      kUnsupported);
}

std::optional<RequestError> RequiredString(const Json& item, const char* key,
                                           const std::string& param, std::string& out) {
  const Json* value = Given(item, key);
  if (value == nullptr) return Missing(param + "." + key);
  if (!value->is_string()) return WrongType(param + "." + key, "a string");
  out = value->get<std::string>();
  return std::nullopt;
}

// The item's own id when it gives one, else a new one.
std::optional<RequestError> ItemId(const Json& item, const std::string& param,
                                   std::string_view prefix, std::string& id) {
  const Json* given = Given(item, "id");
  if (given == nullptr) {
    id = NewId(prefix);
    return std::nullopt;
  }
  if (!given->is_string() || given->get_ref<const std::string&>().empty()) {
    return WrongType(param + ".id", "a non-empty string");
  }
  id = given->get<std::string>();
  return std::nullopt;
}

std::optional<RequestError> NormalizeMessage(const Json& item, const std::string& param,
                                             Json& out) {
  std::string role;
  if (auto error = RequiredString(item, "role", param, role)) return error;
  if (role != "user" && role != "assistant" && role != "system" && role != "developer") {
    return WrongValue(param + ".role", "expected user, assistant, system or developer");
  }
  const Json* content = Given(item, "content");
  if (content == nullptr) return Missing(param + ".content");
  Json parts = Json::array();
  if (content->is_string()) {
    if (role == "assistant") {
      parts.push_back(
          {{"type", "output_text"}, {"text", *content}, {"annotations", Json::array()}});
    } else {
      parts.push_back({{"type", "input_text"}, {"text", *content}});
    }
  } else if (content->is_array()) {
    for (std::size_t i = 0; i < content->size(); ++i) {
      Json part;
      const auto part_param = param + ".content[" + std::to_string(i) + "]";
      if (auto error = NormalizePart((*content)[i], role, part_param, part)) return error;
      parts.push_back(std::move(part));
    }
  } else {
    return WrongType(param + ".content", "a string or an array of content parts");
  }
  std::string id;
  if (auto error = ItemId(item, param, "msg", id)) return error;
  out = {{"type", "message"},
         {"id", id},
         {"status", "completed"},
         {"role", role},
         {"content", std::move(parts)}};
  return std::nullopt;
}

std::optional<RequestError> NormalizeFunctionCall(const Json& item, const std::string& param,
                                                  Json& out) {
  std::string call_id, name, arguments, id;
  if (auto error = RequiredString(item, "call_id", param, call_id)) return error;
  if (auto error = RequiredString(item, "name", param, name)) return error;
  if (auto error = RequiredString(item, "arguments", param, arguments)) return error;
  if (auto error = ItemId(item, param, "fc", id)) return error;
  out = {{"type", "function_call"}, {"id", id},     {"status", "completed"},
         {"call_id", call_id},      {"name", name}, {"arguments", arguments}};
  return std::nullopt;
}

std::optional<RequestError> NormalizeFunctionCallOutput(const Json& item, const std::string& param,
                                                        Json& out) {
  std::string call_id, id, output;
  if (auto error = RequiredString(item, "call_id", param, call_id)) return error;
  const Json* given = Given(item, "output");
  if (given == nullptr) return Missing(param + ".output");
  if (given->is_string()) {
    output = given->get<std::string>();
  } else if (given->is_array()) {
    // Structured tool output: only its text parts can go to a chat upstream.
    for (std::size_t i = 0; i < given->size(); ++i) {
      Json part;
      const auto part_param = param + ".output[" + std::to_string(i) + "]";
      if (auto error = NormalizePart((*given)[i], "user", part_param, part)) return error;
      output += part["text"].get<std::string>();
    }
  } else {
    return WrongType(param + ".output", "a string or an array of input_text parts");
  }
  if (auto error = ItemId(item, param, "fco", id)) return error;
  out = {{"type", "function_call_output"},
         {"id", id},
         {"status", "completed"},
         {"call_id", call_id},
         {"output", output}};
  return std::nullopt;
}

// The chat messages of a request body, written as text from ContextItems' chat_json. A message
// stays open (its closing brace not written) until the next item: function calls join a directly
// preceding assistant message as its `tool_calls`, and consecutive calls share one message.
class ChatMessagesWriter {
 public:
  explicit ChatMessagesWriter(std::string& out) : out_(out) {}

  // A "system" message of its own (the request's instructions).
  void AddSystem(const std::string& text) {
    Next();
    out_ += "{\"role\":\"system\",\"content\":";
    AppendJsonString(out_, text);
    open_ = Open::kMessage;
    tokens_ += EstimateMessageTokens(text);
  }

  // The chat message(s) of an item; an item of another type adds nothing.
  void Add(const ContextItem& item) {
    switch (item.kind) {
      case ContextItem::Kind::kMessage:
      case ContextItem::Kind::kFunctionCallOutput:
        Next();
        out_ += item.chat_json;
        open_ = item.kind == ContextItem::Kind::kMessage && item.role == "assistant"
                    ? Open::kAssistant
                    : Open::kMessage;
        tokens_ += EstimateMessageTokens(item.text_bytes);
        break;
      case ContextItem::Kind::kFunctionCall:
        if (open_ == Open::kToolCalls) {
          out_ += ',';
        } else if (open_ == Open::kAssistant) {
          out_ += ",\"tool_calls\":[";
        } else {
          Next();
          out_ += "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[";
          tokens_ += EstimateMessageTokens(std::size_t{0});
        }
        out_ += item.chat_json;
        open_ = Open::kToolCalls;
        break;
      case ContextItem::Kind::kOther:
        break;
    }
  }

  // Closes the last message.
  void Finish() { CloseOpen(); }

  // EstimateMessageTokens of every message written: EstimatePromptTokens without the priming.
  std::uint64_t tokens() const { return tokens_; }

 private:
  enum class Open : std::uint8_t { kNone, kMessage, kAssistant, kToolCalls };

  // Closes the open message and starts the next one's place in the array.
  void Next() {
    if (open_ != Open::kNone) {
      CloseOpen();
      out_ += ',';
    }
  }
  void CloseOpen() {
    if (open_ == Open::kToolCalls) out_ += ']';
    if (open_ != Open::kNone) out_ += '}';
    open_ = Open::kNone;
  }

  std::string& out_;
  Open open_ = Open::kNone;
  std::uint64_t tokens_ = 0;
};

// ---- ContextItem from an item's JSON text, in one pass ----

// The members of an item, as found: what ContextItemOf reads from a tree.
struct ItemFields {
  std::string type;
  std::string role;
  std::string content_text;  // the parts' text and refusal joined, "" unless content is an array
  std::string call_id;
  std::string name;
  std::string arguments;
  std::string output;
};

ContextItem MakeContextItem(ItemFields fields) {
  ContextItem item;
  std::string& json = item.chat_json;
  if (fields.type == "message") {
    item.kind = ContextItem::Kind::kMessage;
    item.chars = CountChars(fields.content_text);
    item.text_bytes = fields.content_text.size();
    // "developer" is OpenAI's newer name for "system"; not every Chat Completions upstream
    // knows it.
    json = "{\"role\":";
    AppendJsonString(json, fields.role == "developer" ? std::string_view("system") : fields.role);
    json += ",\"content\":";
    AppendJsonString(json, fields.content_text);
    item.role = std::move(fields.role);
  } else if (fields.type == "function_call") {
    item.kind = ContextItem::Kind::kFunctionCall;
    item.chars = CountChars(fields.name) + CountChars(fields.arguments);
    json = "{\"id\":";
    AppendJsonString(json, fields.call_id);
    json += ",\"type\":\"function\",\"function\":{\"name\":";
    AppendJsonString(json, fields.name);
    json += ",\"arguments\":";
    AppendJsonString(json, fields.arguments);
    json += "}}";
  } else if (fields.type == "function_call_output") {
    item.kind = ContextItem::Kind::kFunctionCallOutput;
    item.chars = CountChars(fields.output);
    item.text_bytes = fields.output.size();
    json = "{\"role\":\"tool\",\"tool_call_id\":";
    AppendJsonString(json, fields.call_id);
    json += ",\"content\":";
    AppendJsonString(json, fields.output);
  }
  return item;
}

enum class ItemWhere : std::uint8_t { kItem, kContent, kPart };
enum class ItemMember : std::uint8_t {
  kNone,
  kType,
  kRole,
  kContent,
  kCallId,
  kName,
  kArguments,
  kOutput,
  kPartText,
  kPartRefusal,
};

// Reads an item's JSON text into ItemFields (nlohmann's SAX interface): the levels read are the
// item, its "content" array and the parts in it; everything else is skipped. As in a tree, the
// last value of a repeated key counts, and a member of the wrong type counts as absent.
class ItemScanner : public SaxScan<ItemScanner, ItemWhere, ItemMember, 3> {
 public:
  static ItemMember KeyIn(ItemWhere where, std::string_view key) {
    if (where == ItemWhere::kItem) {
      if (key == "type") return ItemMember::kType;
      if (key == "role") return ItemMember::kRole;
      if (key == "content") return ItemMember::kContent;
      if (key == "call_id") return ItemMember::kCallId;
      if (key == "name") return ItemMember::kName;
      if (key == "arguments") return ItemMember::kArguments;
      if (key == "output") return ItemMember::kOutput;
    } else if (where == ItemWhere::kPart) {
      if (key == "text") return ItemMember::kPartText;
      if (key == "refusal") return ItemMember::kPartRefusal;
    }
    return ItemMember::kNone;
  }

  bool is_object() const { return is_object_; }
  ItemFields& fields() { return fields_; }

  bool null() { return Scalar(); }
  bool boolean(bool /*value*/) { return Scalar(); }
  bool number_integer(number_integer_t /*value*/) { return Scalar(); }
  bool number_unsigned(number_unsigned_t /*value*/) { return Scalar(); }
  bool number_float(number_float_t /*value*/, const string_t& /*text*/) { return Scalar(); }
  bool binary(binary_t& /*value*/) { return Scalar(); }

  bool string(string_t& value) {
    if (skipping()) return true;
    if (std::string* slot = Begin()) *slot = std::move(value);
    EndValue();
    return true;
  }

  bool start_object(std::size_t /*size*/) {
    if (skipping()) return Skip();
    const Level* level = top();
    if (level == nullptr) {
      is_object_ = true;
      return Push(ItemWhere::kItem, /*is_array=*/false);
    }
    if (level->where == ItemWhere::kContent) {
      part_text_.clear();
      part_refusal_.clear();
      return Push(ItemWhere::kPart, /*is_array=*/false);
    }
    Begin();
    return Skip();
  }

  bool start_array(std::size_t /*size*/) {
    if (skipping()) return Skip();
    const Level* level = top();
    if (level == nullptr) return Skip();
    const bool content = level->where == ItemWhere::kItem && level->member == ItemMember::kContent;
    Begin();
    if (!content) return Skip();
    return Push(ItemWhere::kContent, /*is_array=*/true);
  }

  bool end_object() {
    const Level* level = top();
    if (!skipping() && level != nullptr && level->where == ItemWhere::kPart) {
      fields_.content_text += part_text_;
      fields_.content_text += part_refusal_;
    }
    return Close();
  }

 private:
  // A value starts: the member it is the value of is cleared (a repeated key's last value
  // counts; one of the wrong type leaves the member absent). Where a string goes, or nullptr.
  std::string* Begin() {
    const Level* level = top();
    if (level == nullptr || level->is_array) return nullptr;
    switch (level->member) {
      case ItemMember::kType:
        return Cleared(fields_.type);
      case ItemMember::kRole:
        return Cleared(fields_.role);
      case ItemMember::kContent:
        fields_.content_text.clear();  // filled only when the value is an array
        return nullptr;
      case ItemMember::kCallId:
        return Cleared(fields_.call_id);
      case ItemMember::kName:
        return Cleared(fields_.name);
      case ItemMember::kArguments:
        return Cleared(fields_.arguments);
      case ItemMember::kOutput:
        return Cleared(fields_.output);
      case ItemMember::kPartText:
        return Cleared(part_text_);
      case ItemMember::kPartRefusal:
        return Cleared(part_refusal_);
      case ItemMember::kNone:
        return nullptr;
    }
    return nullptr;
  }
  static std::string* Cleared(std::string& member) {
    member.clear();
    return &member;
  }
  bool Scalar() {
    if (skipping()) return true;
    Begin();
    EndValue();
    return true;
  }

  ItemFields fields_;
  std::string part_text_;
  std::string part_refusal_;
  bool is_object_ = false;
};

Json ChatTool(const Json& tool) {
  Json function = {{"name", tool["name"]}};
  for (const char* key : {"description", "parameters", "strict"}) {
    if (const Json* value = Given(tool, key)) function[key] = *value;
  }
  return {{"type", "function"}, {"function", std::move(function)}};
}

std::optional<RequestError> ParseTools(const Json& tools, Json& out) {
  if (!tools.is_array()) return WrongType("tools", "an array");
  for (std::size_t i = 0; i < tools.size(); ++i) {
    const auto param = "tools[" + std::to_string(i) + "]";
    const Json& tool = tools[i];
    if (!tool.is_object()) return WrongType(param, "an object");
    const Json* type = Given(tool, "type");
    if (type == nullptr) return Missing(param + ".type");
    if (*type != "function") {
      return Refuse(param + ".type", "Staple supports only tools of type 'function'.",
                    kUnsupported);
    }
    for (const auto& [key, value] : tool.items()) {
      if (key == "type" || key == "name") continue;
      if (value.is_null()) continue;
      if (key == "description") {
        if (!value.is_string()) return WrongType(param + ".description", "a string");
      } else if (key == "parameters") {
        if (!value.is_object()) return WrongType(param + ".parameters", "an object");
      } else if (key == "strict") {
        if (!value.is_boolean()) return WrongType(param + ".strict", "a boolean");
      } else {
        return Unsupported(param + "." + key);
      }
    }
    std::string name;
    if (auto error = RequiredString(tool, "name", param, name)) return error;
    if (name.empty()) return WrongValue(param + ".name", "expected a non-empty name");
  }
  out = tools;
  return std::nullopt;
}

std::optional<RequestError> ParseToolChoice(const Json& choice, const Json& tools, Json& out) {
  if (choice.is_string()) {
    if (choice != "auto" && choice != "none" && choice != "required") {
      return WrongValue("tool_choice", "expected auto, none or required");
    }
    out = choice;
    return std::nullopt;
  }
  if (!choice.is_object()) return WrongType("tool_choice", "a string or an object");
  const Json* type = Given(choice, "type");
  if (type == nullptr) return Missing("tool_choice.type");
  if (*type != "function") {
    return Refuse("tool_choice.type", "Staple supports only tool_choice of type 'function'.",
                  kUnsupported);
  }
  std::string name;
  if (auto error = RequiredString(choice, "name", "tool_choice", name)) return error;
  bool known = false;
  for (const auto& tool : tools) known = known || tool["name"] == name;
  if (!known) return WrongValue("tool_choice.name", "no function tool has that name");
  out = {{"type", "function"}, {"name", name}};
  return std::nullopt;
}

std::optional<RequestError> ParseText(const Json& text, Json& out) {
  if (!text.is_object()) return WrongType("text", "an object");
  for (const auto& [key, value] : text.items()) {
    if (key == "format" || value.is_null()) continue;
    // OpenAI's default verbosity changes nothing; any other cannot be honoured.
    if (key == "verbosity" && value == "medium") continue;
    return Unsupported("text." + key);
  }
  const Json* format = Given(text, "format");
  if (format == nullptr) {
    out = {{"format", {{"type", "text"}}}};
    return std::nullopt;
  }
  if (!format->is_object()) return WrongType("text.format", "an object");
  const Json* type = Given(*format, "type");
  if (type == nullptr) return Missing("text.format.type");
  if (*type == "json_schema") {
    std::string name;
    if (auto error = RequiredString(*format, "name", "text.format", name)) return error;
    const Json* schema = Given(*format, "schema");
    if (schema == nullptr) return Missing("text.format.schema");
    if (!schema->is_object()) return WrongType("text.format.schema", "an object");
    const Json* strict = Given(*format, "strict");
    if (strict != nullptr && !strict->is_boolean()) {
      return WrongType("text.format.strict", "a boolean");
    }
    const Json* description = Given(*format, "description");
    if (description != nullptr && !description->is_string()) {
      return WrongType("text.format.description", "a string");
    }
  } else if (*type != "text" && *type != "json_object") {
    return WrongValue("text.format.type", "expected text, json_schema or json_object");
  }
  out = text;
  return std::nullopt;
}

std::optional<RequestError> ParseMetadata(const Json& metadata, Json& out) {
  if (!metadata.is_object()) return WrongType("metadata", "an object");
  if (metadata.size() > 16) return WrongValue("metadata", "at most 16 keys");
  for (const auto& [key, value] : metadata.items()) {
    if (key.size() > 64) return WrongValue("metadata", "keys are at most 64 characters");
    if (!value.is_string()) return WrongType("metadata." + key, "a string");
    if (value.get_ref<const std::string&>().size() > 512) {
      return WrongValue("metadata." + key, "values are at most 512 characters");
    }
  }
  out = metadata;
  return std::nullopt;
}

// Fields some SDKs always send with a value that asks for nothing Staple lacks.
std::optional<RequestError> CheckHarmless(const std::string& key, const Json& value) {
  bool harmless = false;
  if (key == "include") {
    harmless = value.is_array() && value.empty();
  } else if (key == "reasoning") {
    harmless = value.is_object();
    if (harmless) {
      for (const auto& member : value) harmless = harmless && member.is_null();
    }
  } else if (key == "service_tier") {
    harmless = value == "auto" || value == "default";
  } else if (key == "background") {
    harmless = value == false;
  } else if (key == "stream_options") {
    harmless = value.is_object();
  } else if (key == "prompt_cache_key" || key == "safety_identifier") {
    // Hints for the provider's cache and abuse detection; they change no answer.
    harmless = value.is_string();
  }
  if (harmless) return std::nullopt;
  return Refuse(key, "Staple does not support '" + key + "' with this value.", kUnsupported);
}

bool IsHarmlessKey(const std::string& key) {
  return key == "include" || key == "reasoning" || key == "service_tier" || key == "background" ||
         key == "stream_options" || key == "prompt_cache_key" || key == "safety_identifier";
}

std::optional<RequestError> ParseFields(const Json& body, ResponsesRequest& parsed) {
  for (const auto& [key, value] : body.items()) {
    if (value.is_null()) continue;  // "not given"
    if (key == "model") {
      if (!value.is_string()) return WrongType("model", "a string");
      parsed.model = value.get<std::string>();
    } else if (key == "input") {
      if (value.is_string()) {
        const Json message = {{"role", "user"}, {"content", value}};
        if (auto error = NormalizeItems(Json::array({message}), "input", parsed.input)) {
          return error;
        }
      } else if (value.is_array()) {
        if (auto error = NormalizeItems(value, "input", parsed.input)) return error;
      } else {
        return WrongType("input", "a string or an array of items");
      }
    } else if (key == "instructions") {
      if (!value.is_string()) return WrongType("instructions", "a string");
      parsed.instructions = value.get<std::string>();
    } else if (key == "previous_response_id") {
      if (!value.is_string()) return WrongType("previous_response_id", "a string");
      parsed.previous_response_id = value.get<std::string>();
    } else if (key == "conversation") {
      const Json* id = value.is_object() ? Given(value, "id") : &value;
      if (id == nullptr) return Missing("conversation.id");
      if (!id->is_string()) return WrongType("conversation", "a string or {\"id\": string}");
      if (value.is_object() && value.size() != 1) return Unsupported("conversation");
      parsed.conversation_id = id->get<std::string>();
    } else if (key == "store" || key == "stream" || key == "parallel_tool_calls") {
      if (!value.is_boolean()) return WrongType(key, "a boolean");
      if (key == "store") parsed.store = value.get<bool>();
      if (key == "stream") parsed.stream = value.get<bool>();
      if (key == "parallel_tool_calls") parsed.parallel_tool_calls = value.get<bool>();
    } else if (key == "tools") {
      if (auto error = ParseTools(value, parsed.tools)) return error;
    } else if (key == "tool_choice") {
      continue;  // checked against the tools below, whatever the order of the members
    } else if (key == "max_output_tokens") {
      if (!value.is_number_integer()) return WrongType("max_output_tokens", "an integer");
      if (value.is_number_unsigned() &&
          value.get<std::uint64_t>() >
              static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        return WrongValue("max_output_tokens", "too large");
      }
      const auto tokens = value.get<std::int64_t>();
      if (tokens < 1) return WrongValue("max_output_tokens", "expected at least 1");
      parsed.max_output_tokens = tokens;
    } else if (key == "temperature" || key == "top_p") {
      if (!value.is_number()) return WrongType(key, "a number");
      const auto number = value.get<double>();
      const double max = key == "temperature" ? 2.0 : 1.0;
      if (!(number >= 0.0 && number <= max)) {
        return WrongValue(key, key == "temperature" ? "expected 0 to 2" : "expected 0 to 1");
      }
      (key == "temperature" ? parsed.temperature : parsed.top_p) = number;
    } else if (key == "metadata") {
      if (auto error = ParseMetadata(value, parsed.metadata)) return error;
    } else if (key == "text") {
      if (auto error = ParseText(value, parsed.text)) return error;
    } else if (key == "truncation") {
      if (value != "auto" && value != "disabled") {
        return WrongValue("truncation", "expected auto or disabled");
      }
      parsed.truncation_auto = value == "auto";
    } else if (key == "user") {
      if (!value.is_string()) return WrongType("user", "a string");
      parsed.user = value.get<std::string>();
    } else if (IsHarmlessKey(key)) {
      if (auto error = CheckHarmless(key, value)) return error;
    } else {
      return Unsupported(key);
    }
  }
  if (const Json* choice = Given(body, "tool_choice")) {
    if (auto error = ParseToolChoice(*choice, parsed.tools, parsed.tool_choice)) return error;
  }
  return std::nullopt;
}

std::string RandomHex(std::size_t bytes) {
  std::array<unsigned char, 64> buffer{};
  if (bytes > buffer.size()) throw std::logic_error("RandomHex: at most 64 bytes");
  SecureRandomBytes(buffer.data(), bytes);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes * 2);
  for (std::size_t i = 0; i < bytes; ++i) {
    hex += kHex[buffer[i] >> 4];
    hex += kHex[buffer[i] & 0xF];
  }
  return hex;
}

std::optional<std::int64_t> Integer(const Json& object, const char* key) {
  const Json* value = object.is_object() ? Given(object, key) : nullptr;
  if (value == nullptr || !value->is_number_integer()) return std::nullopt;
  constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
  if (value->is_number_unsigned() &&
      value->get<std::uint64_t>() > static_cast<std::uint64_t>(kMax)) {
    return kMax;  // saturated, as chat::ScanCompletion reads counts
  }
  return value->get<std::int64_t>();
}

std::string StringOr(const Json& object, const char* key, std::string fallback) {
  const Json* value = object.is_object() ? Given(object, key) : nullptr;
  if (value == nullptr || !value->is_string()) return fallback;
  return value->get<std::string>();
}

Json OutputText(std::string text) {
  return {{"type", "output_text"}, {"text", std::move(text)}, {"annotations", Json::array()}};
}

Json RefusalPart(std::string refusal) {
  return {{"type", "refusal"}, {"refusal", std::move(refusal)}};
}

Json MessageItem(std::string id, std::string_view status, Json content) {
  return {{"type", "message"},
          {"id", std::move(id)},
          {"status", status},
          {"role", "assistant"},
          {"content", std::move(content)}};
}

Json FunctionCallItem(std::string call_id, std::string name, std::string arguments,
                      std::string_view status) {
  return {{"type", "function_call"}, {"id", NewId("fc")},
          {"status", status},        {"call_id", std::move(call_id)},
          {"name", std::move(name)}, {"arguments", std::move(arguments)}};
}

// status and incomplete_details from a choice's finish_reason.
void ApplyFinishReason(const std::string& finish_reason, ResponseOutput& output) {
  if (finish_reason == "length") {
    output.status = "incomplete";
    output.incomplete_details = {{"reason", "max_output_tokens"}};
  } else if (finish_reason == "content_filter") {
    output.status = "incomplete";
    output.incomplete_details = {{"reason", "content_filter"}};
  }
}

void ReadUsage(const Json& chunk, ResponseOutput& output) {
  const Json* usage = Given(chunk, "usage");
  if (usage == nullptr || !usage->is_object()) return;
  if (auto tokens = Integer(*usage, "prompt_tokens")) output.input_tokens = tokens;
  if (auto tokens = Integer(*usage, "completion_tokens")) output.output_tokens = tokens;
}

Json Usage(const ResponseOutput& output) {
  if (!output.input_tokens && !output.output_tokens) return nullptr;
  const std::int64_t input = output.input_tokens.value_or(0);
  const std::int64_t produced = output.output_tokens.value_or(0);
  return {{"input_tokens", input},
          {"input_tokens_details", {{"cached_tokens", 0}}},
          {"output_tokens", produced},
          {"output_tokens_details", {{"reasoning_tokens", 0}}},
          {"total_tokens", input + produced}};
}

}  // namespace

std::string NewId(std::string_view prefix) {
  // The creation time in milliseconds (12 hex digits, 48 bits) first, then 18 random bytes: ids
  // made later sort after earlier ones, so a new row's entry in the store's indexes on ids lands
  // where the previous one did (the pages a commit writes are few and already cached) instead of
  // on a random leaf; 144 random bits keep the ids unguessable.
  static constexpr char kHex[] = "0123456789abcdef";
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  const auto millis = static_cast<std::uint64_t>(now);
  std::string id(prefix);
  id.reserve(prefix.size() + 1 + 48);
  id += '_';
  for (int shift = 44; shift >= 0; shift -= 4) id += kHex[(millis >> shift) & 0xf];
  id += RandomHex(18);
  return id;
}

std::optional<RequestError> NormalizeItems(const Json& items, std::string_view param_prefix,
                                           Json& normalized) {
  if (!items.is_array()) return WrongType(std::string(param_prefix), "an array");
  Json out = Json::array();
  for (std::size_t i = 0; i < items.size(); ++i) {
    const auto param = std::string(param_prefix) + "[" + std::to_string(i) + "]";
    const Json& item = items[i];
    if (!item.is_object()) return WrongType(param, "an object");
    const Json* type = Given(item, "type");
    std::string type_name = "message";  // EasyInputMessage: {role, content} without a type
    if (type != nullptr) {
      if (!type->is_string()) return WrongType(param + ".type", "a string");
      type_name = type->get<std::string>();
    }
    Json normalized_item;
    std::optional<RequestError> error;
    if (type_name == "message") {
      error = NormalizeMessage(item, param, normalized_item);
    } else if (type_name == "function_call") {
      error = NormalizeFunctionCall(item, param, normalized_item);
    } else if (type_name == "function_call_output") {
      error = NormalizeFunctionCallOutput(item, param, normalized_item);
    } else {
      error = Refuse(param + ".type",
                     "Staple does not support input items of type '" + type_name +
                         "' (only message, function_call and function_call_output).",
                     kUnsupported);
    }
    if (error) return error;
    out.push_back(std::move(normalized_item));
  }
  normalized = std::move(out);
  return std::nullopt;
}

std::optional<RequestError> ParseResponsesRequest(std::string_view body, ResponsesRequest& parsed) {
  const auto tree = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (tree.is_discarded() || !tree.is_object()) {
    return RequestError{"The request body must be a JSON object.", "", ""};
  }
  ResponsesRequest request;
  if (auto error = ParseFields(tree, request)) return error;
  if (request.model.empty()) return Missing("model");
  if (Given(tree, "input") == nullptr) return Missing("input");
  if (!request.previous_response_id.empty() && !request.conversation_id.empty()) {
    return Refuse("conversation",
                  "Mutually exclusive parameters: give either 'previous_response_id' or "
                  "'conversation', not both.",
                  kInvalidValue);
  }
  for (const auto& item : request.input) {
    if (Text(item, "type") == "message" && Text(item, "role") == "user") {
      request.prompt_text = ItemText(item);
    }
  }
  parsed = std::move(request);
  return std::nullopt;
}

ContextItem ContextItemOf(const Json& item) {
  if (!item.is_object()) return {};
  ItemFields fields;
  fields.type = Text(item, "type");
  if (fields.type == "message") {
    fields.role = Text(item, "role");
    fields.content_text = ItemText(item);
  } else if (fields.type == "function_call") {
    fields.call_id = Text(item, "call_id");
    fields.name = Text(item, "name");
    fields.arguments = Text(item, "arguments");
  } else if (fields.type == "function_call_output") {
    fields.call_id = Text(item, "call_id");
    fields.output = Text(item, "output");
  }
  return MakeContextItem(std::move(fields));
}

std::optional<ContextItem> ReadContextItem(std::string_view json) {
  ItemScanner scanner;
  if (!nlohmann::json::sax_parse(json.begin(), json.end(), &scanner) || !scanner.is_object()) {
    return std::nullopt;
  }
  return MakeContextItem(std::move(scanner.fields()));
}

std::size_t ContextStart(std::span<const ContextItem> context, const Json& input,
                         const WindowLimits& limits, bool& fits) {
  std::size_t messages = 0;
  std::size_t chars = 0;
  if (input.is_array()) {
    for (const auto& item : input) {
      ++messages;
      chars += ContextItemOf(item).chars;
    }
  }
  const auto within = [&](std::size_t more_messages, std::size_t more_chars) {
    return (limits.max_messages == 0 || messages + more_messages <= limits.max_messages) &&
           (limits.max_chars == 0 || chars + more_chars <= limits.max_chars);
  };
  // Walk whole turns from the newest back. The items before the first user message (e.g. a
  // leading developer message) count as one turn of their own.
  std::size_t first_kept = context.size();
  std::size_t turn_end = context.size();
  for (std::size_t i = context.size(); i-- > 0;) {
    const bool user_message =
        context[i].kind == ContextItem::Kind::kMessage && context[i].role == "user";
    if (!user_message && i != 0) continue;
    std::size_t turn_chars = 0;
    for (std::size_t j = i; j < turn_end; ++j) turn_chars += context[j].chars;
    if (!within(turn_end - i, turn_chars)) break;
    messages += turn_end - i;
    chars += turn_chars;
    first_kept = i;
    turn_end = i;
  }
  fits = first_kept == 0;
  return first_kept;
}

std::string BuildChatBody(const ResponsesRequest& request, std::span<const ContextItem> context,
                          std::size_t context_start, bool stream, TokenEstimate& estimate) {
  // The model and the messages are written as text (the context items' chat_json as they are),
  // the other members as a tree, dumped after them: the same text as dumping one tree.
  std::size_t size = 64 + request.model.size();
  for (std::size_t i = context_start; i < context.size(); ++i) {
    size += context[i].chat_json.size() + 32;
  }
  std::string out;
  out.reserve(size);
  out += "{\"model\":";
  AppendJsonString(out, request.model);
  out += ",\"messages\":[";
  ChatMessagesWriter messages(out);
  if (request.instructions && !request.instructions->empty()) {
    messages.AddSystem(*request.instructions);
  }
  for (std::size_t i = context_start; i < context.size(); ++i) messages.Add(context[i]);
  for (const auto& item : request.input) messages.Add(ContextItemOf(item));
  messages.Finish();
  out += ']';
  estimate.prompt = kReplyPrimingTokens + messages.tokens();
  estimate.max_completion.reset();
  if (request.max_output_tokens) {
    estimate.max_completion = static_cast<std::uint64_t>(*request.max_output_tokens);
  }

  Json body = Json::object();

  // OpenAI refuses tool_choice and parallel_tool_calls without tools.
  if (!request.tools.empty()) {
    Json tools = Json::array();
    for (const auto& tool : request.tools) tools.push_back(ChatTool(tool));
    body["tools"] = std::move(tools);
    if (request.tool_choice.is_object()) {
      body["tool_choice"] = {{"type", "function"},
                             {"function", {{"name", request.tool_choice["name"]}}}};
    } else {
      body["tool_choice"] = request.tool_choice;
    }
    if (request.parallel_tool_calls) body["parallel_tool_calls"] = *request.parallel_tool_calls;
  }
  if (request.max_output_tokens) body["max_tokens"] = *request.max_output_tokens;
  if (request.temperature) body["temperature"] = *request.temperature;
  if (request.top_p) body["top_p"] = *request.top_p;
  if (!request.user.empty()) body["user"] = request.user;

  const Json* format = Given(request.text, "format");
  if (format != nullptr && format->is_object()) {
    const auto type = StringOr(*format, "type", "text");
    if (type == "json_object") {
      body["response_format"] = {{"type", "json_object"}};
    } else if (type == "json_schema") {
      Json schema = {{"name", (*format)["name"]}, {"schema", (*format)["schema"]}};
      for (const char* key : {"strict", "description"}) {
        if (const Json* value = Given(*format, key)) schema[key] = *value;
      }
      body["response_format"] = {{"type", "json_schema"}, {"json_schema", std::move(schema)}};
    }
  }
  if (stream) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
  }
  if (body.empty()) {
    out += '}';
  } else {
    const std::string rest = JsonText(body);
    out += ',';
    out.append(rest, 1);  // without its opening brace
  }
  return out;
}

Result<ResponseOutput> ReadChatCompletion(std::string_view body) {
  const auto tree = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (tree.is_discarded() || !tree.is_object()) {
    return MakeError(ErrorKind::kUpstream, "the upstream's answer is not a JSON object");
  }
  const Json* choices = Given(tree, "choices");
  if (choices == nullptr || !choices->is_array() || choices->empty() ||
      !(*choices)[0].is_object()) {
    return MakeError(ErrorKind::kUpstream, "the upstream's answer has no choices");
  }
  const Json& choice = (*choices)[0];
  const Json* message = Given(choice, "message");
  if (message == nullptr || !message->is_object()) {
    return MakeError(ErrorKind::kUpstream, "the upstream's answer has no message");
  }
  ResponseOutput output;
  output.model = StringOr(tree, "model", "");
  ApplyFinishReason(StringOr(choice, "finish_reason", ""), output);
  output.text = StringOr(*message, "content", "");

  Json calls = Json::array();
  if (const Json* tool_calls = Given(*message, "tool_calls")) {
    if (!tool_calls->is_array()) {
      return MakeError(ErrorKind::kUpstream, "the upstream's tool_calls is not a list");
    }
    for (const auto& call : *tool_calls) {
      const Json* function = call.is_object() ? Given(call, "function") : nullptr;
      if (function == nullptr || !function->is_object()) {
        return MakeError(ErrorKind::kUpstream, "the upstream's tool call has no function");
      }
      calls.push_back(FunctionCallItem(StringOr(call, "id", NewId("call")),
                                       StringOr(*function, "name", ""),
                                       StringOr(*function, "arguments", ""), "completed"));
    }
  }
  // A refusal is a part of its own; a message without text still has its output_text part
  // unless it is a refusal.
  const std::string refusal = StringOr(*message, "refusal", "");
  if (!output.text.empty() || !refusal.empty() || calls.empty()) {
    Json parts = Json::array();
    if (!output.text.empty() || refusal.empty()) parts.push_back(OutputText(output.text));
    if (!refusal.empty()) parts.push_back(RefusalPart(refusal));
    output.output.push_back(MessageItem(
        NewId("msg"), output.status == "completed" ? "completed" : "incomplete", std::move(parts)));
  }
  for (auto& call : calls) output.output.push_back(std::move(call));
  ReadUsage(tree, output);
  return output;
}

ResponseOutput PlainAnswerOutput(std::string model, std::string_view finish_reason,
                                 std::string text, std::optional<std::int64_t> prompt_tokens,
                                 std::optional<std::int64_t> completion_tokens) {
  ResponseOutput output;
  output.model = std::move(model);
  ApplyFinishReason(std::string(finish_reason), output);
  output.text = std::move(text);
  output.output.push_back(MessageItem(NewId("msg"),
                                      output.status == "completed" ? "completed" : "incomplete",
                                      Json::array({OutputText(output.text)})));
  output.input_tokens = prompt_tokens;
  output.output_tokens = completion_tokens;
  return output;
}

Json ResponseObject(const ResponsesRequest& request, std::string_view id, std::int64_t created_at,
                    const ResponseOutput* output) {
  const bool started = output == nullptr;
  const std::string model =
      output != nullptr && !output->model.empty() ? output->model : request.model;
  Json conversation = nullptr;
  if (!request.conversation_id.empty()) conversation = {{"id", request.conversation_id}};
  return {
      {"id", id},
      {"object", "response"},
      {"created_at", created_at},
      {"status", started ? "in_progress" : output->status},
      {"error", nullptr},
      {"incomplete_details", started ? Json(nullptr) : output->incomplete_details},
      {"instructions", request.instructions ? Json(*request.instructions) : Json(nullptr)},
      {"max_output_tokens",
       request.max_output_tokens ? Json(*request.max_output_tokens) : Json(nullptr)},
      {"model", model},
      {"output", started ? Json::array() : output->output},
      {"parallel_tool_calls", request.parallel_tool_calls.value_or(true)},
      {"previous_response_id",
       request.previous_response_id.empty() ? Json(nullptr) : Json(request.previous_response_id)},
      {"conversation", conversation},
      {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}},
      {"store", request.store},
      {"temperature", request.temperature.value_or(1.0)},
      {"text", request.text},
      {"tool_choice", request.tool_choice},
      {"tools", request.tools},
      {"top_p", request.top_p.value_or(1.0)},
      {"truncation", request.truncation_auto ? "auto" : "disabled"},
      {"usage", started ? Json(nullptr) : Usage(*output)},
      {"user", request.user.empty() ? Json(nullptr) : Json(request.user)},
      {"metadata", request.metadata},
  };
}

namespace {

// `text` as a JSON string, or null when there is none.
void AppendStringOrNull(std::string& out, const std::string* text) {
  if (text != nullptr) {
    AppendJsonString(out, *text);
  } else {
    out += "null";
  }
}

// A string member that is null when empty.
const std::string* UnlessEmpty(const std::string& text) { return text.empty() ? nullptr : &text; }

// `,"key":` (keys here are plain ASCII).
void AppendKey(std::string& out, std::string_view key) {
  out += ",\"";
  out += key;
  out += "\":";
}

}  // namespace

std::string ResponseObjectText(const ResponsesRequest& request, std::string_view id,
                               std::int64_t created_at, const ResponseOutput* output,
                               OutputSpans* spans) {
  // The members in ResponseObject's order.
  const bool started = output == nullptr;
  std::string out;
  out.reserve(1024 + (started ? 0 : output->text.size() * 2));
  out += "{\"id\":";
  AppendJsonString(out, id);
  out += ",\"object\":\"response\",\"created_at\":";
  out += std::to_string(created_at);
  AppendKey(out, "status");
  AppendJsonString(out, started ? std::string_view("in_progress") : output->status);
  out += ",\"error\":null";
  AppendKey(out, "incomplete_details");
  AppendJsonText(out, started ? Json(nullptr) : output->incomplete_details);
  AppendKey(out, "instructions");
  AppendStringOrNull(out, request.instructions ? &*request.instructions : nullptr);
  AppendKey(out, "max_output_tokens");
  out += request.max_output_tokens ? std::to_string(*request.max_output_tokens) : "null";
  AppendKey(out, "model");
  AppendJsonString(out,
                   output != nullptr && !output->model.empty() ? output->model : request.model);
  AppendKey(out, "output");
  if (spans != nullptr) {
    spans->items.clear();
    spans->array_begin = out.size();
  }
  out += '[';
  if (!started) {
    // Item by item, as the array's dump() writes them: each item's text is then at hand.
    for (std::size_t i = 0; i < output->output.size(); ++i) {
      if (i != 0) out += ',';
      const std::size_t begin = out.size();
      AppendJsonText(out, output->output[i]);
      if (spans != nullptr) spans->items.emplace_back(begin, out.size());
    }
  }
  out += ']';
  if (spans != nullptr) spans->array_end = out.size();
  AppendKey(out, "parallel_tool_calls");
  out += request.parallel_tool_calls.value_or(true) ? "true" : "false";
  AppendKey(out, "previous_response_id");
  AppendStringOrNull(out, UnlessEmpty(request.previous_response_id));
  AppendKey(out, "conversation");
  if (request.conversation_id.empty()) {
    out += "null";
  } else {
    out += "{\"id\":";
    AppendJsonString(out, request.conversation_id);
    out += '}';
  }
  out += ",\"reasoning\":{\"effort\":null,\"summary\":null}";
  AppendKey(out, "store");
  out += request.store ? "true" : "false";
  AppendKey(out, "temperature");
  AppendJsonText(out, Json(request.temperature.value_or(1.0)));
  AppendKey(out, "text");
  AppendJsonText(out, request.text);
  AppendKey(out, "tool_choice");
  AppendJsonText(out, request.tool_choice);
  AppendKey(out, "tools");
  AppendJsonText(out, request.tools);
  AppendKey(out, "top_p");
  AppendJsonText(out, Json(request.top_p.value_or(1.0)));
  AppendKey(out, "truncation");
  out += request.truncation_auto ? "\"auto\"" : "\"disabled\"";
  AppendKey(out, "usage");
  AppendJsonText(out, started ? Json(nullptr) : Usage(*output));
  AppendKey(out, "user");
  AppendStringOrNull(out, UnlessEmpty(request.user));
  AppendKey(out, "metadata");
  AppendJsonText(out, request.metadata);
  out += '}';
  return out;
}

std::string WithoutOutput(std::string_view object, const OutputSpans& spans) {
  if (spans.array_end <= spans.array_begin || spans.array_end > object.size()) {
    return std::string(object);
  }
  std::string stored;
  stored.reserve(object.size() - (spans.array_end - spans.array_begin) + 2);
  stored.append(object.substr(0, spans.array_begin));
  stored += "[]";
  stored.append(object.substr(spans.array_end));
  return stored;
}

namespace {

// The offset of the stored output array's '[' in a response object, npos when there is none. The
// members before "output" are the id, numbers, null, fixed words, JSON strings (in which a quote
// is always escaped) and incomplete_details ({"reason": …} or null), so the first `,"output":`
// is the member itself.
std::size_t OutputArrayAt(std::string_view stored) {
  static constexpr std::string_view kKey = ",\"output\":";
  const std::size_t key = stored.find(kKey);
  if (key == std::string_view::npos) return std::string_view::npos;
  const std::size_t at = key + kKey.size();
  return at < stored.size() && stored[at] == '[' ? at : std::string_view::npos;
}

}  // namespace

bool StoredOutputIsEmpty(std::string_view stored) {
  const std::size_t at = OutputArrayAt(stored);
  return at != std::string_view::npos && stored.substr(at, 2) == "[]";
}

std::string WithStoredOutput(std::string stored, std::span<const std::string> items) {
  if (items.empty()) return stored;
  const std::size_t array = OutputArrayAt(stored);
  if (array == std::string::npos || stored.compare(array, 2, "[]") != 0) return stored;
  const std::size_t at = array + 1;  // after the '['
  std::string joined;
  for (const std::string& item : items) {
    if (!joined.empty()) joined += ',';
    joined += item;
  }
  stored.insert(at, joined);
  return stored;
}

ResponseEventStream::ResponseEventStream(ResponsesRequest request, std::string id,
                                         std::int64_t created_at)
    : request_(std::move(request)), id_(std::move(id)), created_at_(created_at) {}

std::string ResponseEventStream::Event(std::string_view type, Json payload) {
  Json event = {{"type", type}, {"sequence_number", sequence_++}};
  for (auto& [key, value] : payload.items()) event[key] = std::move(value);
  std::string text = "event: ";
  text += type;
  text += "\ndata: ";
  AppendJsonText(text, event);
  text += "\n\n";
  return text;
}

std::string ResponseEventStream::Start() {
  const std::string response = ResponseObjectText(request_, id_, created_at_, nullptr);
  std::string text = ResponseEvent("response.created", response);
  text += ResponseEvent("response.in_progress", response);
  return text;
}

std::string ResponseEventStream::ResponseEvent(std::string_view type, const std::string& response) {
  // What Event(type, {{"response", …}}) writes.
  std::string text = "event: ";
  text += type;
  text += "\ndata: {\"type\":";
  AppendJsonString(text, type);
  text += ",\"sequence_number\":";
  text += std::to_string(sequence_++);
  text += ",\"response\":";
  text += response;
  text += "}\n\n";
  return text;
}

Result<std::string> ResponseEventStream::Add(std::string_view chunk_data) {
  const auto chunk = Json::parse(chunk_data, nullptr, /*allow_exceptions=*/false);
  if (chunk.is_discarded() || !chunk.is_object()) {
    return MakeError(ErrorKind::kUpstream, "the upstream's stream event is not a JSON object");
  }
  if (const Json* error = Given(chunk, "error")) {
    const std::string message = error->is_object() ? StringOr(*error, "message", "") : "";
    return MakeError(ErrorKind::kUpstream, "the upstream's stream reported an error" +
                                               (message.empty() ? std::string() : ": " + message));
  }
  const Json* choices = Given(chunk, "choices");
  if (choices != nullptr && !choices->is_array()) {
    return MakeError(ErrorKind::kUpstream, "the upstream's stream event has no choices list");
  }
  if (choices == nullptr && Given(chunk, "usage") == nullptr) {
    return MakeError(ErrorKind::kUpstream, "the upstream's stream event is not a chunk");
  }
  if (finished_) return std::string();
  if (auto model = StringOr(chunk, "model", ""); !model.empty()) output_.model = model;
  ReadUsage(chunk, output_);

  std::string text;
  if (choices == nullptr || choices->empty()) return text;
  // One answer per response: the first choice (n is never set upstream).
  const Json& choice = (*choices)[0];
  if (!choice.is_object()) {
    return MakeError(ErrorKind::kUpstream, "the upstream's stream choice is not an object");
  }
  const Json* delta = Given(choice, "delta");
  if (delta != nullptr && delta->is_object()) {
    const std::string content = StringOr(*delta, "content", "");
    if (!content.empty()) {
      if (!text_part_) text += OpenPart("output_text");
      auto& item = output_.output[*message_index_];
      item["content"][*text_part_]["text"].get_ref<std::string&>() += content;
      output_.text += content;
      text += Event("response.output_text.delta", {{"item_id", item["id"]},
                                                   {"output_index", *message_index_},
                                                   {"content_index", *text_part_},
                                                   {"delta", content},
                                                   {"logprobs", Json::array()}});
    }
    const std::string refusal = StringOr(*delta, "refusal", "");
    if (!refusal.empty()) {
      if (!refusal_part_) text += OpenPart("refusal");
      auto& item = output_.output[*message_index_];
      item["content"][*refusal_part_]["refusal"].get_ref<std::string&>() += refusal;
      text += Event("response.refusal.delta", {{"item_id", item["id"]},
                                               {"output_index", *message_index_},
                                               {"content_index", *refusal_part_},
                                               {"delta", refusal}});
    }
    const Json* tool_calls = Given(*delta, "tool_calls");
    if (tool_calls != nullptr) {
      if (!tool_calls->is_array()) {
        return MakeError(ErrorKind::kUpstream, "the upstream's tool_calls delta is not a list");
      }
      for (std::size_t position = 0; position < tool_calls->size(); ++position) {
        const Json& call = (*tool_calls)[position];
        if (!call.is_object()) {
          return MakeError(ErrorKind::kUpstream, "the upstream's tool call is not an object");
        }
        // Upstreams that send one whole call per delta may leave out its index.
        const auto index = Integer(call, "index").value_or(static_cast<std::int64_t>(position));
        const Json* function = Given(call, "function");
        const Json no_function = Json::object();
        if (function == nullptr || !function->is_object()) function = &no_function;
        OpenCall* open = nullptr;
        for (auto& candidate : calls_) {
          if (candidate.upstream_index == index) open = &candidate;
        }
        if (open == nullptr) {
          // The first delta of a call carries its id and name.
          calls_.push_back({index, output_.output.size()});
          open = &calls_.back();
          output_.output.push_back(FunctionCallItem(StringOr(call, "id", NewId("call")),
                                                    StringOr(*function, "name", ""), "",
                                                    "in_progress"));
          text += Event(
              "response.output_item.added",
              {{"output_index", open->output_index}, {"item", output_.output[open->output_index]}});
        }
        const std::string arguments = StringOr(*function, "arguments", "");
        if (!arguments.empty()) {
          auto& item = output_.output[open->output_index];
          item["arguments"].get_ref<std::string&>() += arguments;
          text +=
              Event("response.function_call_arguments.delta", {{"item_id", item["id"]},
                                                               {"output_index", open->output_index},
                                                               {"delta", arguments}});
        }
      }
    }
  }
  const std::string finish_reason = StringOr(choice, "finish_reason", "");
  if (!finish_reason.empty()) ApplyFinishReason(finish_reason, output_);
  return text;
}

std::string ResponseEventStream::OpenPart(std::string_view type) {
  std::string text;
  if (!message_index_) {
    message_index_ = output_.output.size();
    output_.output.push_back(MessageItem(NewId("msg"), "in_progress", Json::array()));
    text += Event("response.output_item.added",
                  {{"output_index", *message_index_}, {"item", output_.output.back()}});
  }
  auto& item = output_.output[*message_index_];
  const std::size_t content_index = item["content"].size();
  const Json part = type == "refusal" ? RefusalPart("") : OutputText("");
  (type == "refusal" ? refusal_part_ : text_part_) = content_index;
  text += Event("response.content_part.added", {{"item_id", item["id"]},
                                                {"output_index", *message_index_},
                                                {"content_index", content_index},
                                                {"part", part}});
  item["content"].push_back(part);
  return text;
}

std::string ResponseEventStream::Finish() {
  if (finished_) return {};
  finished_ = true;
  std::string text;
  // ReadChatCompletion's shape: an answer with neither text nor tool calls is an empty message.
  if (!message_index_ && calls_.empty()) text += OpenPart("output_text");
  for (std::size_t index = 0; index < output_.output.size(); ++index) {
    auto& item = output_.output[index];
    if (message_index_ && index == *message_index_) {
      for (std::size_t content_index = 0; content_index < item["content"].size(); ++content_index) {
        const Json& part = item["content"][content_index];
        if (part["type"] == "refusal") {
          text += Event("response.refusal.done", {{"item_id", item["id"]},
                                                  {"output_index", index},
                                                  {"content_index", content_index},
                                                  {"refusal", part["refusal"]}});
        } else {
          text += Event("response.output_text.done", {{"item_id", item["id"]},
                                                      {"output_index", index},
                                                      {"content_index", content_index},
                                                      {"text", part["text"]},
                                                      {"logprobs", Json::array()}});
        }
        text += Event("response.content_part.done", {{"item_id", item["id"]},
                                                     {"output_index", index},
                                                     {"content_index", content_index},
                                                     {"part", part}});
      }
      item["status"] = output_.status == "completed" ? "completed" : "incomplete";
    } else {
      text += Event("response.function_call_arguments.done", {{"item_id", item["id"]},
                                                              {"output_index", index},
                                                              {"name", item["name"]},
                                                              {"arguments", item["arguments"]}});
      item["status"] = "completed";
    }
    text += Event("response.output_item.done", {{"output_index", index}, {"item", item}});
  }
  return text;
}

std::string ResponseEventStream::Completed() {
  // OpenAI ends an answer cut short with response.incomplete instead.
  const char* type = output_.status == "completed" ? "response.completed" : "response.incomplete";
  return ResponseEvent(type, ResponseObjectText(request_, id_, created_at_, &output_));
}

std::string ResponseEventStream::Failed(const Error& error) {
  Json response = ResponseObject(request_, id_, created_at_, &output_);
  response["status"] = "failed";
  response["incomplete_details"] = nullptr;
  response["error"] = {{"code", error.kind == ErrorKind::kTimeout ? "timeout" : "server_error"},
                       {"message", error.message}};
  return Event("response.failed", {{"response", response}});
}

}  // namespace staple::chat::responses
