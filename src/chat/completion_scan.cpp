#include "chat/completion_scan.h"

#include <limits>
#include <nlohmann/json.hpp>

#include "chat/sax_scan.h"

namespace staple::chat {
namespace {

using nlohmann::json;

// The containers whose members matter; every other container is skipped whole.
enum class Where : std::uint8_t { kRoot, kChoices, kFirstChoice, kMessage, kDelta, kUsage, kError };

// What the next value is, given the container it is in and its key or index.
enum class Slot : std::uint8_t {
  kNone,
  kModel,
  kChoices,
  kUsage,
  kError,
  kFirstChoice,
  kIndex,
  kFinishReason,
  kMessage,
  kDelta,
  kMessageContent,
  kMessageToolCalls,
  kMessageRefusal,
  kDeltaContent,
  kPromptTokens,
  kCompletionTokens,
  kErrorMessage,
};

Slot SlotOf(Where where, std::string_view key) {
  switch (where) {
    case Where::kRoot:
      if (key == "model") return Slot::kModel;
      if (key == "choices") return Slot::kChoices;
      if (key == "usage") return Slot::kUsage;
      if (key == "error") return Slot::kError;
      return Slot::kNone;
    case Where::kFirstChoice:
      if (key == "message") return Slot::kMessage;
      if (key == "delta") return Slot::kDelta;
      if (key == "index") return Slot::kIndex;
      if (key == "finish_reason") return Slot::kFinishReason;
      return Slot::kNone;
    case Where::kMessage:
      if (key == "content") return Slot::kMessageContent;
      if (key == "tool_calls") return Slot::kMessageToolCalls;
      if (key == "refusal") return Slot::kMessageRefusal;
      return Slot::kNone;
    case Where::kDelta:
      return key == "content" ? Slot::kDeltaContent : Slot::kNone;
    case Where::kUsage:
      if (key == "prompt_tokens") return Slot::kPromptTokens;
      if (key == "completion_tokens") return Slot::kCompletionTokens;
      return Slot::kNone;
    case Where::kError:
      return key == "message" ? Slot::kErrorMessage : Slot::kNone;
    case Where::kChoices:
      return Slot::kNone;
  }
  return Slot::kNone;
}

// An nlohmann SAX handler; the levels read never exceed root → choices → choices[0] → message.
class Scanner : public SaxScan<Scanner, Where, Slot, 4> {
 public:
  static Slot KeyIn(Where where, std::string_view key) { return SlotOf(where, key); }

  bool is_object() const { return is_object_; }
  CompletionFields& fields() { return fields_; }

  bool null() {
    if (skipping()) return true;
    switch (Begin()) {
      case Slot::kMessageContent:
        fields_.message_content = CompletionFields::Content::kNull;
        break;
      case Slot::kFinishReason:
        fields_.finish_reason = false;
        break;
      case Slot::kMessageToolCalls:
        fields_.message_tool_calls = false;
        break;
      case Slot::kMessageRefusal:
        fields_.message_refusal = false;
        break;
      case Slot::kError:
        fields_.error = false;
        break;
      default:
        break;
    }
    EndValue();
    return true;
  }
  bool boolean(bool /*value*/) { return Other(); }
  bool number_integer(number_integer_t value) { return Integer(value); }
  // A count beyond 64-bit signed saturates: cast, it would turn negative and count as nothing.
  bool number_unsigned(number_unsigned_t value) {
    constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
    return Integer(value > static_cast<number_unsigned_t>(kMax) ? kMax
                                                                : static_cast<std::int64_t>(value));
  }
  bool number_float(number_float_t /*value*/, const string_t& /*text*/) { return Other(); }
  bool binary(binary_t& /*value*/) { return Other(); }

  bool string(string_t& value) {
    if (skipping()) return true;
    switch (Begin()) {
      case Slot::kModel:
        fields_.model = value;
        break;
      case Slot::kMessageContent:
        fields_.message_content = CompletionFields::Content::kString;
        fields_.message_text = value;
        break;
      case Slot::kFinishReason:
        fields_.finish_reason_text = value;
        break;
      case Slot::kDeltaContent:
        fields_.delta_text = value;
        break;
      case Slot::kError:
        fields_.error_text = value;
        break;
      case Slot::kErrorMessage:
        fields_.error_text = value;
        break;
      default:
        break;
    }
    EndValue();
    return true;
  }

  bool start_object(std::size_t /*size*/) {
    if (skipping()) return Skip();
    if (top() == nullptr) {
      is_object_ = true;
      return Push(Where::kRoot, /*is_array=*/false);
    }
    switch (Begin()) {
      case Slot::kFirstChoice:
        fields_.has_first_choice = true;
        return Push(Where::kFirstChoice, false);
      case Slot::kMessage:
        fields_.has_message = true;
        return Push(Where::kMessage, false);
      case Slot::kDelta:
        return Push(Where::kDelta, false);
      case Slot::kUsage:
        return Push(Where::kUsage, false);
      case Slot::kError:
        return Push(Where::kError, false);
      default:
        return Skip();
    }
  }

  bool start_array(std::size_t /*size*/) {
    if (skipping() || top() == nullptr) return Skip();
    if (Begin() == Slot::kChoices) return Push(Where::kChoices, /*is_array=*/true);
    return Skip();
  }

  bool end_object() { return Close(); }

 private:
  // The slot of the value that starts now. A new value for a slot replaces what an earlier one
  // (a repeated key) left there, so the last one counts.
  Slot Begin() {
    const Level* level = top();
    if (level == nullptr) return Slot::kNone;  // a scalar as the whole body
    Slot slot = level->member;
    if (level->is_array) {
      slot = level->where == Where::kChoices && level->next_index == 0 ? Slot::kFirstChoice
                                                                       : Slot::kNone;
    }
    switch (slot) {
      case Slot::kModel:
        fields_.model.clear();
        break;
      case Slot::kChoices:
      case Slot::kFirstChoice:
        fields_.has_first_choice = false;
        fields_.index.reset();
        fields_.finish_reason = false;
        fields_.finish_reason_text.clear();
        ClearMessage();
        fields_.delta_text.reset();
        break;
      case Slot::kUsage:
        fields_.prompt_tokens.reset();
        fields_.completion_tokens.reset();
        break;
      case Slot::kError:
        // Any value but null is an error; its text is filled in by what follows.
        fields_.error = true;
        fields_.error_text.clear();
        break;
      case Slot::kIndex:
        fields_.index.reset();
        break;
      case Slot::kFinishReason:
        fields_.finish_reason = true;  // null turns it back off
        fields_.finish_reason_text.clear();
        break;
      case Slot::kMessage:
        ClearMessage();  // an object sets has_message
        break;
      case Slot::kMessageToolCalls:
        fields_.message_tool_calls = true;  // null turns it back off
        break;
      case Slot::kMessageRefusal:
        fields_.message_refusal = true;  // null turns it back off
        break;
      case Slot::kMessageContent:
        // A string or null says so when it arrives; any other value stays kOther.
        fields_.message_content = CompletionFields::Content::kOther;
        fields_.message_text.clear();
        break;
      case Slot::kDelta:
      case Slot::kDeltaContent:
        fields_.delta_text.reset();
        break;
      case Slot::kPromptTokens:
        fields_.prompt_tokens.reset();
        break;
      case Slot::kCompletionTokens:
        fields_.completion_tokens.reset();
        break;
      case Slot::kErrorMessage:
        fields_.error_text.clear();
        break;
      case Slot::kNone:
        break;
    }
    return slot;
  }

  void ClearMessage() {
    fields_.has_message = false;
    fields_.message_content = CompletionFields::Content::kAbsent;
    fields_.message_text.clear();
    fields_.message_tool_calls = false;
    fields_.message_refusal = false;
  }

  bool Integer(std::int64_t value) {
    if (skipping()) return true;
    switch (Begin()) {
      case Slot::kIndex:
        fields_.index = value;
        break;
      case Slot::kPromptTokens:
        fields_.prompt_tokens = value;
        break;
      case Slot::kCompletionTokens:
        fields_.completion_tokens = value;
        break;
      default:
        break;
    }
    EndValue();
    return true;
  }

  // A boolean, float or binary value: it only matters as "present and not null".
  bool Other() {
    if (skipping()) return true;
    Begin();
    EndValue();
    return true;
  }

  bool is_object_ = false;
  CompletionFields fields_;
};

}  // namespace

std::optional<CompletionFields> ScanCompletion(std::string_view body) {
  Scanner scanner;
  const bool parsed = json::sax_parse(body.begin(), body.end(), &scanner);
  if (!parsed || !scanner.is_object()) return std::nullopt;
  return std::move(scanner.fields());
}

}  // namespace staple::chat
