// Configuration values (environment, flags, .env), through config::Load: every value of every
// variable either loads or fails with a message naming a variable; what loads is consistent (the
// trusted proxies the configuration accepts are all understood by the admission's proxy list; a
// secret never appears whole in the start-up banner). Input: lines whose first byte picks a
// variable and whose rest is its value.
#include <map>
#include <string>

#include "api/client_address.h"
#include "config/config.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& variables = staple::config::Variables();
  auto text = staple::fuzz::AsText(data, size);
  std::map<std::string, std::string> environment;
  while (!text.empty()) {
    const auto newline = text.find('\n');
    const auto line = text.substr(0, newline);
    text = newline == std::string_view::npos ? std::string_view() : text.substr(newline + 1);
    if (line.empty()) continue;
    const auto& variable = variables[static_cast<unsigned char>(line[0]) % variables.size()];
    environment[variable.name] = std::string(line.substr(1));
  }
  staple::config::Sources sources;
  sources.environment = [&environment](const std::string& name) -> std::optional<std::string> {
    const auto it = environment.find(name);
    if (it == environment.end()) return std::nullopt;
    return it->second;
  };
  const auto config = staple::config::Load(sources);
  if (!config) {
    FUZZ_CHECK(config.error().message.find("STAPLE_") != std::string::npos ||
               config.error().message.find("OPENAI_") != std::string::npos);
    return 0;
  }
  const staple::api::TrustedProxies proxies(config->limits.trusted_proxies);
  FUZZ_CHECK(proxies.size() == config->limits.trusted_proxies.size());
  for (const auto& variable : variables) {
    if (!variable.secret) continue;
    const auto it = environment.find(variable.name);
    if (it == environment.end() || it->second.size() < 12 ||
        it->second.find("://") != std::string::npos) {
      continue;
    }
    for (const auto& [name, shown] : config->effective) {
      if (name == variable.name) FUZZ_CHECK(shown.find(it->second) == std::string::npos);
    }
  }
  return 0;
}
