#include "chat/completion_scan.h"

#include <array>
#include <nlohmann/json.hpp>

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
  kDeltaContent,
  kPromptTokens,
  kCompletionTokens,
  kErrorMessage,
};

Slot KeyIn(Where where, std::string_view key) {
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
      return key == "content" ? Slot::kMessageContent : Slot::kNone;
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

// An nlohmann SAX handler. Containers that hold nothing of interest are only counted (`skipped_`),
// so the levels kept never exceed root → choices → choices[0] → message.
class Scanner {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  bool is_object() const { return is_object_; }
  CompletionFields& fields() { return fields_; }

  bool null() {
    if (skipped_ > 0) return true;
    switch (Begin()) {
      case Slot::kMessageContent:
        fields_.message_content = CompletionFields::Content::kNull;
        break;
      case Slot::kFinishReason:
        fields_.finish_reason = false;
        break;
      case Slot::kError:
        fields_.error = false;
        break;
      default:
        break;
    }
    End();
    return true;
  }
  bool boolean(bool /*value*/) { return Other(); }
  bool number_integer(number_integer_t value) { return Integer(value); }
  bool number_unsigned(number_unsigned_t value) {
    return Integer(static_cast<std::int64_t>(value));
  }
  bool number_float(number_float_t /*value*/, const string_t& /*text*/) { return Other(); }
  bool binary(binary_t& /*value*/) { return Other(); }

  bool string(string_t& value) {
    if (skipped_ > 0) return true;
    switch (Begin()) {
      case Slot::kModel:
        fields_.model = value;
        break;
      case Slot::kMessageContent:
        fields_.message_content = CompletionFields::Content::kString;
        fields_.message_text = value;
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
    End();
    return true;
  }

  bool start_object(std::size_t /*size*/) {
    if (skipped_ > 0) return Skip();
    if (depth_ == 0) {
      is_object_ = true;
      return Push(Where::kRoot, /*is_array=*/false);
    }
    switch (Begin()) {
      case Slot::kFirstChoice:
        fields_.has_first_choice = true;
        return Push(Where::kFirstChoice, false);
      case Slot::kMessage:
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
    if (skipped_ > 0 || depth_ == 0) return Skip();
    if (Begin() == Slot::kChoices) return Push(Where::kChoices, /*is_array=*/true);
    return Skip();
  }

  bool key(string_t& value) {
    if (skipped_ == 0) levels_[depth_ - 1].slot = KeyIn(levels_[depth_ - 1].where, value);
    return true;
  }

  bool end_object() { return Close(); }
  bool end_array() { return Close(); }

  bool parse_error(std::size_t /*position*/, const std::string& /*token*/,
                   const nlohmann::detail::exception& /*error*/) {
    return false;
  }

 private:
  struct Level {
    Where where = Where::kRoot;
    bool is_array = false;
    Slot slot = Slot::kNone;  // of the value after the last key (objects)
    std::size_t next_index = 0;  // of the next element (arrays)
  };

  // The slot of the value that starts now. A new value for a slot replaces what an earlier one
  // (a repeated key) left there, so the last one counts.
  Slot Begin() {
    if (depth_ == 0) return Slot::kNone;  // a scalar as the whole body
    const Level& level = levels_[depth_ - 1];
    Slot slot = level.slot;
    if (level.is_array) {
      slot = level.where == Where::kChoices && level.next_index == 0 ? Slot::kFirstChoice
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
        fields_.message_content = CompletionFields::Content::kAbsent;
        fields_.message_text.clear();
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
        break;
      case Slot::kMessage:
        fields_.message_content = CompletionFields::Content::kAbsent;
        fields_.message_text.clear();
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

  // A value at the current level ended: the next element of an array has the next index.
  void End() {
    if (depth_ > 0 && levels_[depth_ - 1].is_array) ++levels_[depth_ - 1].next_index;
  }

  bool Integer(std::int64_t value) {
    if (skipped_ > 0) return true;
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
    End();
    return true;
  }

  // A boolean, float or binary value: it only matters as "present and not null".
  bool Other() {
    if (skipped_ > 0) return true;
    Begin();
    End();
    return true;
  }

  bool Push(Where where, bool is_array) {
    levels_[depth_] = Level{where, is_array, Slot::kNone, 0};
    ++depth_;
    return true;
  }

  bool Skip() {
    ++skipped_;
    return true;
  }

  bool Close() {
    if (skipped_ > 0) {
      --skipped_;
    } else {
      --depth_;
    }
    if (skipped_ == 0) End();
    return true;
  }

  std::array<Level, 4> levels_{};
  std::size_t depth_ = 0;
  std::size_t skipped_ = 0;
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
