#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace staple::keys {

// How the stores keep a key's allowed models: a JSON array of strings, as text.
std::string EncodeModels(const std::vector<std::string>& models);
// kStorage when the stored text is not such an array (the row was edited by hand).
Result<std::vector<std::string>> DecodeModels(const std::string& text);

}  // namespace staple::keys
