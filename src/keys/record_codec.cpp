#include "keys/record_codec.h"

#include <nlohmann/json.hpp>

namespace staple::keys {

std::string EncodeModels(const std::vector<std::string>& models) {
  return nlohmann::json(models).dump();
}

Result<std::vector<std::string>> DecodeModels(const std::string& text) {
  const auto parsed = nlohmann::json::parse(text, nullptr, false);
  if (!parsed.is_array()) {
    return MakeError(ErrorKind::kStorage, "stored allowed_models is not a JSON array");
  }
  std::vector<std::string> models;
  for (const auto& model : parsed) {
    if (!model.is_string()) {
      return MakeError(ErrorKind::kStorage, "stored allowed_models holds a non-string");
    }
    models.push_back(model.get<std::string>());
  }
  return models;
}

}  // namespace staple::keys
