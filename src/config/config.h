#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "ratelimit/limit.h"
#include "ratelimit/rate_limiter.h"
#include "upstream/make_client.h"
#include "upstream/routes.h"

namespace staple::config {

// One configuration variable: its environment name, its command-line flag and its default.
struct Variable {
  const char* name;      // e.g. "STAPLE_PORT"
  const char* flag;      // e.g. "--port"
  std::string fallback;  // the default, as text
  const char* help;
  bool secret;  // masked in the start-up banner
};

// Every variable Staple reads, in banner order. Each default is written once: a default that a
// subsystem's settings struct already carries (upstream::Settings, http::ServerOptions,
// chat::ServiceSettings, chat::WindowLimits, api::TokenLimitSettings) is read from that struct's
// member initializer; the others (e.g. STAPLE_THREADS=0, STAPLE_DATABASE_URL, the limits) are
// written in this table. The loader and `staple serve --help` both use it.
const std::vector<Variable>& Variables();

// The structs below hold what Load() resolved; Load() sets every field, from the variable or its
// default in Variables(), so they carry no defaults of their own.
struct ServerSettings {
  std::string host;
  std::uint16_t port = 0;
  int threads = 0;  // resolved: at least 1
  std::size_t max_body_bytes = 0;
  // Resolved: STAPLE_MAX_CONNECTIONS=0 becomes http::DefaultMaxConnections(open-file limit), the
  // share 0 becomes http::DefaultMaxConnectionsPerPeer(max_connections).
  std::size_t max_connections = 0;
  std::size_t max_connections_per_peer = 0;
  std::chrono::milliseconds idle_timeout{0};    // keep-alive wait for the next request
  std::chrono::milliseconds header_timeout{0};  // first byte of a request head -> its end
  std::chrono::milliseconds shutdown_grace{0};
  bool json_logs = false;
  bool access_log = false;
};

struct StoreSettings {
  std::string url;          // as configured
  std::string sqlite_path;  // for sqlite:/// URLs
  bool sqlite_synchronous_full = false;
  std::size_t cache_bytes = 0;  // STAPLE_CACHE_MB: the store's caches together
  // STAPLE_RETENTION: conversation messages older than this are deleted; 0 = kept forever.
  std::chrono::seconds retention{0};
};

struct LimitSettings {
  std::vector<ratelimit::RateLimitItem> default_limits;     // per client, across routes
  std::vector<ratelimit::RateLimitItem> completion_limits;  // per client, /openai-completion
  std::vector<ratelimit::RateLimitItem> v1_limits;          // per client, /v1/chat/completions
  std::vector<ratelimit::RateLimitItem> responses_limits;   // per client, POST /v1/responses
  std::vector<ratelimit::RateLimitItem> token_limits;       // tokens per client, chat routes
  std::uint64_t token_completion_reserve = 0;  // reserved when a request sets no max tokens
  ratelimit::Strategy strategy{};
  std::string storage_url;  // "memory://" or a redis:// URL
  bool fail_open = false;
  std::vector<std::string> trusted_proxies;  // IP addresses or CIDR networks
  int ipv6_prefix = 0;                       // IPv6 clients are counted per network of this size
  std::size_t max_clients = 0;               // in-process limiter: clients kept (see app.cpp)
};

struct AuthSettings {
  bool keys = false;      // STAPLE_AUTH=keys: every API route needs a client key
  std::string admin_key;  // STAPLE_ADMIN_KEY ("" = no admin API); at least 32 characters
  std::vector<ratelimit::RateLimitItem> failure_limits;  // failed authentications per address
  // Without client keys, the Host names a request may carry besides loopback ones (lower case,
  // no port); see `check_host`.
  std::vector<std::string> allowed_hosts;
  // Without client keys: refuse requests whose Host is neither a loopback name nor in
  // allowed_hosts (DNS rebinding). On when listening on loopback or when allowed_hosts is set.
  bool check_host = false;
};

struct ChatSettings {
  std::string model;
  std::string system_prompt;
  std::size_t history_max_messages = 0;  // 0 = no limit
  std::size_t history_max_chars = 0;     // 0 = no limit
};

struct UpstreamSettings {
  std::string base_url;
  std::string api_key;
  std::chrono::milliseconds total_timeout{0};
  std::chrono::milliseconds connect_timeout{0};
  std::chrono::milliseconds first_byte_timeout{0};  // request sent -> first response byte
  std::chrono::milliseconds idle_timeout{0};        // between two chunks of a stream
  std::chrono::milliseconds stream_timeout{0};      // a whole stream
  int max_retries = 0;
  // STAPLE_UPSTREAM_CLIENT: which HTTP client talks to the upstreams (upstream/make_client.h).
  upstream::ClientKind client = upstream::ClientKind::kAuto;
  // STAPLE_UPSTREAMS: the file's path and what it configures; "" and std::nullopt without one
  // (then base_url and api_key above are the only upstream).
  std::string routes_file;
  std::optional<upstream::RouterSettings> routes;
  // STAPLE_DEMO: the built-in demo upstream (app/demo_upstream.h) instead of any of the above.
  bool demo = false;
};

struct Config {
  ServerSettings server;
  StoreSettings store;
  LimitSettings limits;
  AuthSettings auth;
  ChatSettings chat;
  UpstreamSettings upstream;
  // Every variable's effective value with secrets masked, for the start-up banner.
  std::vector<std::pair<std::string, std::string>> effective;
};

// Where raw values come from, highest priority first: command-line flags (name -> value, only the
// flags given), the environment, the `.env` file's entries, then the defaults. An empty value
// counts as set (e.g. STAPLE_COMPLETION_LIMIT= disables that limit).
struct Sources {
  std::map<std::string, std::string> flags;
  std::function<std::optional<std::string>(const std::string&)> environment;
  std::map<std::string, std::string> dotenv;
};

// Validates everything once. The error message is one line naming the variable, e.g.
// "invalid STAPLE_PORT='x': expected a port number 1-65535".
Result<Config> Load(const Sources& sources);

// Parses a `.env` file's text: KEY=VALUE lines, optional `export `, # comments, single- or
// double-quoted values (double quotes understand \n \t \" \\). Errors name the line number.
Result<std::map<std::string, std::string>> ParseDotenv(const std::string& text);

// A bare period in the limits notation ("90 days", "12 hours", "1 day", "day"): the period of the
// limit "1 per <text>", read by ratelimit::ParseLimits. kInvalidArgument for anything else.
Result<std::chrono::seconds> ParsePeriod(std::string_view text);

// Shows the start and end of a secret only: "sk-a…wxyz"; short secrets become "***".
std::string MaskSecret(const std::string& secret);
// Replaces the password of "scheme://user:password@host/..." with "***".
std::string MaskUrlPassword(const std::string& url);

}  // namespace staple::config
