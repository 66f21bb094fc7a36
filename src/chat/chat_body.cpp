#include "chat/chat_body.h"

#include <array>
#include <limits>

#include "chat/sax_scan.h"

namespace staple::chat {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// The string member `key` of a JSON object, or "".
std::string StringMember(const ordered_json& object, const char* key) {
  if (!object.is_object()) return {};
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

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

}  // namespace staple::chat
