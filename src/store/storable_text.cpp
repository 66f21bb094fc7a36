#include "store/storable_text.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

namespace staple::store {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

// The length of the well-formed sequence starting at `text[i]` (1 to 4), or 0 when none starts
// there; then `*bad` is how many bytes form the maximal subpart to replace (at least 1).
std::size_t SequenceLength(std::string_view text, std::size_t i, std::size_t* bad) {
  const auto lead = static_cast<unsigned char>(text[i]);
  *bad = 1;
  if (lead == 0) return 0;
  if (lead < 0x80) return 1;
  // Bytes that may follow the lead (Unicode's table of well-formed byte sequences): the second
  // byte's range depends on the lead, every later one is 80..BF.
  std::size_t length = 0;
  unsigned char low = 0x80;
  unsigned char high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // no overlong forms
    if (lead == 0xED) high = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // no overlong forms
    if (lead == 0xF4) high = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;  // 80..C1 (continuation bytes, overlong leads) and F5..FF never start a sequence
  }
  for (std::size_t k = 1; k < length; ++k) {
    if (i + k >= text.size()) {
      *bad = k;
      return 0;
    }
    const auto next = static_cast<unsigned char>(text[i + k]);
    if (next < low || next > high) {
      *bad = k;
      return 0;
    }
    low = 0x80;
    high = 0xBF;
  }
  return length;
}

// Whether the 8 bytes at `p` are all ASCII and none is NUL: the common case, checked a word at
// a time (a stored turn is a few KiB of mostly ASCII JSON, checked on the request's thread).
bool PlainAsciiWord(const char* p) {
  std::uint64_t word = 0;
  std::memcpy(&word, p, sizeof word);
  constexpr std::uint64_t kOnes = 0x0101010101010101ULL;
  constexpr std::uint64_t kHighBits = 0x8080808080808080ULL;
  const std::uint64_t has_zero_byte = (word - kOnes) & ~word & kHighBits;
  return ((word & kHighBits) | has_zero_byte) == 0;
}

}  // namespace

bool IsStorableText(std::string_view text) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < text.size();) {
    if (text.size() - i >= 8 && PlainAsciiWord(text.data() + i)) {
      i += 8;
      continue;
    }
    const std::size_t length = SequenceLength(text, i, &bad);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

std::string ToStorableText(std::string_view text) {
  if (IsStorableText(text)) return std::string(text);
  std::string out;
  out.reserve(text.size() + 16);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t length = SequenceLength(text, i, &bad);
    if (length == 0) {
      out.append(kReplacement);
      i += bad;
    } else {
      out.append(text.substr(i, length));
      i += length;
    }
  }
  return out;
}

void MakeStorable(Turn& turn) {
  for (std::string* text : {&turn.owner, &turn.user_id, &turn.request_id, &turn.model, &turn.prompt,
                            &turn.completion}) {
    if (!IsStorableText(*text)) *text = ToStorableText(*text);
  }
  if (!turn.response) return;
  // The record is shared and const: it is copied only in the rare case that it needs a change
  // (an item id holding "\u0000" that the client sent, say).
  const ResponseRecord& record = *turn.response;
  auto storable = [](const std::string& text) { return IsStorableText(text); };
  bool clean = storable(record.response.id) && storable(record.response.conversation_id) &&
               storable(record.response.previous_response_id) && storable(record.response.json);
  for (const auto* items : {&record.input, &record.output}) {
    for (const ItemToStore& item : *items)
      clean = clean && storable(item.id) && storable(item.json);
  }
  if (clean) return;
  auto copy = std::make_shared<ResponseRecord>(record);
  for (std::string* text : {&copy->response.id, &copy->response.conversation_id,
                            &copy->response.previous_response_id, &copy->response.json}) {
    *text = ToStorableText(*text);
  }
  for (auto* items : {&copy->input, &copy->output}) {
    for (ItemToStore& item : *items) {
      item.id = ToStorableText(item.id);
      item.json = ToStorableText(item.json);
    }
  }
  turn.response = std::move(copy);
}

}  // namespace staple::store
