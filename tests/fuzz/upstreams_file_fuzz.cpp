// The STAPLE_UPSTREAMS file (TOML), through config::ParseUpstreams: any text either loads or fails
// with one line that names the file; a key read through api_key_env never appears in an error; what
// loads is what the router relies on (at least one upstream, unique names of 1-64 safe characters,
// weights of at least 1, a base URL and at least one model per entry).
#include <algorithm>
#include <set>
#include <string>

#include "config/upstreams_file.h"
#include "fuzz_check.h"

namespace {

constexpr const char* kSecret = "sk-fuzz-0123456789abcdef";

bool SafeName(const std::string& name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = staple::fuzz::AsText(data, size);
  staple::upstream::Settings defaults;
  defaults.base_url = "http://127.0.0.1:1/v1";
  const auto environment = [](const std::string& name) -> std::optional<std::string> {
    if (name.empty() || name[0] == 'U') return std::nullopt;  // some variables are unset
    return std::string(kSecret);
  };
  const auto loaded = staple::config::ParseUpstreams(text, "upstreams.toml", defaults, environment);
  if (!loaded.ok()) {
    const auto& message = loaded.error().message;
    FUZZ_CHECK(message.rfind("upstreams.toml", 0) == 0);
    FUZZ_CHECK(message.find('\n') == std::string::npos);
    // (A file that holds the key's text itself may see it quoted back.)
    if (text.find(kSecret) == std::string_view::npos) {
      FUZZ_CHECK(message.find(kSecret) == std::string::npos);
    }
    return 0;
  }
  FUZZ_CHECK(!loaded->upstreams.empty());
  std::set<std::string> names;
  for (const auto& entry : loaded->upstreams) {
    FUZZ_CHECK(SafeName(entry.name));
    FUZZ_CHECK(names.insert(entry.name).second);
    FUZZ_CHECK(entry.weight >= 1);
    FUZZ_CHECK(!entry.models.empty());
    FUZZ_CHECK(!entry.settings.base_url.empty());
  }
  return 0;
}
