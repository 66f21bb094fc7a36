// A `.env` file: any text either fails naming a line or yields entries that, written back as
// double-quoted KEY="value" lines, parse to the same entries.
#include <string>

#include "config/config.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(staple::fuzz::AsText(data, size));
  const auto entries = staple::config::ParseDotenv(text);
  if (!entries) {
    FUZZ_CHECK(entries.error().message.rfind(".env line ", 0) == 0);
    return 0;
  }
  std::string written;
  for (const auto& [key, value] : *entries) {
    FUZZ_CHECK(!key.empty() && key.find_first_of(" \t\n=") == std::string::npos);
    written += "export " + key + "=\"";
    for (const char c : value) {
      if (c == '\n') {
        written += "\\n";
      } else if (c == '"' || c == '\\') {
        written += '\\';
        written += c;
      } else {
        written += c;
      }
    }
    written += "\"\n";
  }
  const auto again = staple::config::ParseDotenv(written);
  FUZZ_CHECK(again && *again == *entries);
  return 0;
}
