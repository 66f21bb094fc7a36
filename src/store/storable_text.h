#pragma once

#include <string>
#include <string_view>

#include "store/conversation_store.h"

namespace staple::store {

// Whether `text` is well-formed UTF-8 without a NUL byte: what every store keeps unchanged.
bool IsStorableText(std::string_view text);

// `text` with each NUL byte and each ill-formed UTF-8 sequence replaced by U+FFFD (EF BF BD).
// An ill-formed sequence is a maximal subpart in the Unicode sense: the longest prefix of a
// well-formed sequence that is not followed by the byte it needs ("\xE2\x82x" has one, "\xFF\xFE"
// two, an overlong "\xC0\xAF" two). Well-formed text is returned unchanged.
std::string ToStorableText(std::string_view text);

// Applies ToStorableText to every text field of `turn` (owner, user_id, request_id, model,
// prompt, completion, and the ids and JSON of its response record, if any).
void MakeStorable(Turn& turn);

}  // namespace staple::store
