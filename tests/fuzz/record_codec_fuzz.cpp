// A key's stored allowed_models (a row may have been edited by hand): any text either fails or
// yields models that encode and decode back to themselves.
#include <string>

#include "fuzz_check.h"
#include "keys/record_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(staple::fuzz::AsText(data, size));
  const auto models = staple::keys::DecodeModels(text);
  if (!models) {
    FUZZ_CHECK(!models.error().message.empty());
    return 0;
  }
  const auto again = staple::keys::DecodeModels(staple::keys::EncodeModels(*models));
  FUZZ_CHECK(again && *again == *models);
  return 0;
}
