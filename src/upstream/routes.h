#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "upstream/client.h"

// What the router (upstream/router.h) is configured with: the upstreams behind Staple and the
// cooldown rule. Plain values; config/upstreams_file.h reads them from STAPLE_UPSTREAMS.
namespace staple::upstream {

struct UpstreamEntry {
  std::string name;  // [A-Za-z0-9._-], 1-64 characters, unique; X-Staple-Upstream and metrics
  // base_url, api_key (read from the variable named by api_key_env), timeouts, retries. Fields the
  // file does not set keep the global STAPLE_UPSTREAM_* values.
  Settings settings;
  // The client model names this upstream serves: exact names and globs ('*' any run of
  // characters, '?' one character). The keys of `rename` are served too.
  std::vector<std::string> models;
  // Client model name -> the name this upstream knows it by (exact names only).
  std::vector<std::pair<std::string, std::string>> rename;
  unsigned weight = 1;             // share among the candidates of one priority
  int priority = 0;                // lower is tried first
  std::size_t max_concurrent = 0;  // requests in flight at once; 0 = no cap
  // Hedged first token: when a stream this upstream was asked for has sent no body bytes after
  // this long, the next candidate is asked too, and the first to send bytes wins (the other is
  // cancelled). 0 = off. Streams only.
  std::chrono::milliseconds hedge_after{0};
};

struct CooldownSettings {
  int failures = 3;  // this many failures within `window` ...
  std::chrono::milliseconds window{30'000};
  std::chrono::milliseconds period{30'000};  // ... skip the upstream this long, then one probe
};

struct RouterSettings {
  std::vector<UpstreamEntry> upstreams;
  CooldownSettings cooldown;
};

}  // namespace staple::upstream
