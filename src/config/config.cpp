#include "config/config.h"

#include <fmt/format.h>

#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>
#include <cctype>
#include <charconv>
#include <thread>

#include "api/token_limits.h"
#include "chat/context_window.h"
#include "chat/conversation_service.h"
#include "common/net.h"
#include "config/upstreams_file.h"
#include "http/connection_limits.h"
#include "http/server.h"
#include "ratelimit/redis_url.h"
#include "upstream/client.h"

namespace staple::config {
namespace {

using Lookup = std::function<const std::string&(const char*)>;

Error Invalid(const char* name, const std::string& value, const std::string& why) {
  return MakeError(ErrorKind::kInvalidArgument,
                   std::string("invalid ") + name + "='" + value + "': " + why);
}

std::string Trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r\n");
  return std::string(text.substr(first, last - first + 1));
}

Result<std::int64_t> ParseInteger(const char* name, const std::string& value, std::int64_t min,
                                  std::int64_t max) {
  const auto text = Trim(value);
  std::int64_t parsed = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), parsed);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || parsed < min ||
      parsed > max) {
    return Invalid(
        name, value,
        "expected a whole number from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return parsed;
}

Result<std::chrono::milliseconds> ParseSeconds(const char* name, const std::string& value,
                                               double min, double max) {
  const auto text = Trim(value);
  double parsed = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), parsed);
  // Written so that NaN ("nan" parses) fails the range check too.
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
      !(parsed >= min && parsed <= max)) {
    return Invalid(name, value, "expected seconds (e.g. 30 or 2.5)");
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(parsed * 1000));
}

Result<std::vector<ratelimit::RateLimitItem>> ParseLimitList(const char* name,
                                                             const std::string& value) {
  if (Trim(value).empty()) return std::vector<ratelimit::RateLimitItem>{};
  auto parsed = ratelimit::ParseLimits(value);
  if (!parsed) return Invalid(name, value, parsed.error().message);
  return std::move(parsed).value();
}

// The non-empty entries of a comma-separated list, trimmed.
std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> entries;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    auto entry = Trim(std::string_view(text).substr(start, end - start));
    start = end + 1;
    if (!entry.empty()) entries.push_back(std::move(entry));
  }
  return entries;
}

Result<bool> ParseBool(const char* name, const std::string& value) {
  const auto text = Trim(value);
  if (text == "1" || text == "true" || text == "on" || text == "yes") return true;
  if (text == "0" || text == "false" || text == "off" || text == "no") return false;
  return Invalid(name, value, "expected true or false");
}

bool ValidProxy(const std::string& entry) {
  boost::system::error_code ec;
  if (entry.find('/') != std::string::npos) {
    net::ip::make_network_v4(entry, ec);
    if (!ec) return true;
    ec.clear();
    net::ip::make_network_v6(entry, ec);
    return !ec;
  }
  net::ip::make_address(entry, ec);
  return !ec;
}

// A duration as the seconds variables take it: "120", or "2.5" for a fraction of a second.
std::string SecondsText(std::chrono::milliseconds duration) {
  if (duration.count() % 1000 == 0) return std::to_string(duration.count() / 1000);
  return fmt::format("{}", static_cast<double>(duration.count()) / 1000);
}

std::vector<Variable> MakeVariables() {
  // The defaults of the subsystems' own settings (their member initializers).
  const upstream::Settings upstream;
  const http::ServerOptions server;
  const chat::ServiceSettings chat;
  const chat::WindowLimits window;
  const api::TokenLimitSettings tokens;
  const auto number = [](auto value) { return std::to_string(value); };
  return {
      {"OPENAI_API_KEY", "--api-key", "", "API key sent to the upstream", true},
      {"OPENAI_BASE_URL", "--base-url", upstream.base_url, "OpenAI-compatible upstream base URL",
       false},
      {"OPENAI_MODEL", "--model", chat.model, "model for /openai-completion", false},
      {"STAPLE_HOST", "--host", server.host, "listen address", false},
      {"STAPLE_PORT", "--port", number(server.port), "listen port (0 picks a free one)", false},
      {"STAPLE_THREADS", "--threads", "0", "I/O threads (0 = one per core)", false},
      {"STAPLE_DATABASE_URL", "--database-url", "sqlite:///instance/chat_history.db",
       "conversation store", true},
      {"STAPLE_SQLITE_SYNCHRONOUS", "--sqlite-synchronous", "full",
       "SQLite synchronous level: full or normal", false},
      {"STAPLE_CACHE_MB", "--cache-mb", "64",
       "memory budget of the conversation store's caches, MiB (history cache and SQLite pages)",
       false},
      {"STAPLE_RETENTION", "--retention", "",
       "delete conversation messages older than this period, e.g. \"90 days\" or \"12 hours\" "
       "(empty = keep forever)",
       false},
      {"STAPLE_RATELIMIT_STORAGE", "--ratelimit-storage", "memory://",
       "limit counters storage: memory:// or redis://host:port[/db]", true},
      {"STAPLE_DEFAULT_LIMITS", "--default-limits", "200 per day;50 per hour",
       "per-client limits across all API routes (empty = none)", false},
      {"STAPLE_COMPLETION_LIMIT", "--completion-limit", "10 per minute",
       "per-client limit of /openai-completion (empty = none)", false},
      {"STAPLE_V1_LIMIT", "--v1-limit", "", "per-client limit of /v1/chat/completions", false},
      {"STAPLE_RESPONSES_LIMIT", "--responses-limit", "", "per-client limit of POST /v1/responses",
       false},
      {"STAPLE_TOKEN_LIMITS", "--token-limits", "",
       "per-client token limits across chat routes, e.g. 100000 per day (empty = none)", false},
      {"STAPLE_TOKEN_COMPLETION_RESERVE", "--token-completion-reserve",
       number(tokens.completion_reserve),
       "completion tokens reserved for a request that sets no max_tokens", false},
      {"STAPLE_RATELIMIT_STRATEGY", "--ratelimit-strategy", "fixed-window",
       "fixed-window, moving-window or sliding-window-counter", false},
      {"STAPLE_RATELIMIT_FAILURE", "--ratelimit-failure", "closed",
       "when limiter storage fails: closed (503) or open (admit)", false},
      {"STAPLE_TRUSTED_PROXIES", "--trusted-proxies", "",
       "proxies whose X-Forwarded-For is trusted (IPs/CIDRs, comma-separated)", false},
      {"STAPLE_IPV6_PREFIX", "--ipv6-prefix", "64",
       "IPv6 clients share limits per network of this many bits (1-128; 128 = per address)", false},
      {"STAPLE_LIMITER_MAX_CLIENTS", "--limiter-max-clients", "100000",
       "clients the in-process limiter keeps counters for; beyond it the least recently seen are "
       "forgotten",
       false},
      {"STAPLE_AUTH", "--auth", "",
       "off or keys (client keys required); must be set when not listening on loopback", false},
      {"STAPLE_ADMIN_KEY", "--admin-key", "",
       "secret of the admin API under /admin/keys (at least 32 characters; empty = disabled)",
       true},
      {"STAPLE_AUTH_FAILURE_LIMIT", "--auth-failure-limit", "10 per minute",
       "failed authentications allowed per client address", false},
      {"STAPLE_ALLOWED_HOSTS", "--allowed-hosts", "",
       "without client keys: Host names accepted besides localhost and loopback addresses "
       "(comma-separated)",
       false},
      {"STAPLE_SYSTEM_PROMPT", "--system-prompt", "", "system message sent first", false},
      {"STAPLE_HISTORY_MAX_MESSAGES", "--history-max-messages", number(window.max_messages),
       "stored messages sent with a prompt (0 = no limit)", false},
      {"STAPLE_HISTORY_MAX_CHARS", "--history-max-chars", number(window.max_chars),
       "characters of stored messages sent with a prompt (0 = no limit)", false},
      {"STAPLE_UPSTREAM_TIMEOUT", "--upstream-timeout", SecondsText(upstream.total_timeout),
       "upstream total timeout of a non-streaming exchange, and of a stream until its headers "
       "(retries included), seconds",
       false},
      {"STAPLE_UPSTREAM_STREAM_TIMEOUT", "--upstream-stream-timeout",
       SecondsText(upstream.stream_timeout), "upstream total timeout of a whole stream, seconds",
       false},
      {"STAPLE_UPSTREAM_CONNECT_TIMEOUT", "--upstream-connect-timeout",
       SecondsText(upstream.connect_timeout), "upstream connect timeout, seconds", false},
      {"STAPLE_UPSTREAM_FIRST_BYTE_TIMEOUT", "--upstream-first-byte-timeout",
       SecondsText(upstream.first_byte_timeout),
       "upstream time to the first byte of a stream (first token), seconds; non-streaming "
       "completions are bounded by the total timeout",
       false},
      {"STAPLE_UPSTREAM_IDLE_TIMEOUT", "--upstream-idle-timeout",
       SecondsText(upstream.idle_timeout), "upstream stream idle time between chunks, seconds",
       false},
      {"STAPLE_DEMO", "--demo", "false",
       "answer with the built-in demo upstream (an echo; no key, no network): to try Staple",
       false},
      {"STAPLE_UPSTREAMS", "--upstreams", "",
       "TOML file of several upstreams: routing by model, fallbacks, cooldowns (README "
       "\"Upstreams\"); empty: OPENAI_BASE_URL and OPENAI_API_KEY are the only upstream",
       false},
      {"STAPLE_UPSTREAM_CLIENT", "--upstream-client", "auto",
       "HTTP client for upstreams: asio (HTTP/1.1 keep-alive, plain or TLS), curl (libcurl: "
       "proxies, HTTP/2), or auto (asio, but curl when a proxy variable such as HTTPS_PROXY is "
       "set)",
       false},
      {"STAPLE_UPSTREAM_RETRIES", "--upstream-retries", number(upstream.max_retries),
       "extra attempts on connect errors, 429 and 5xx (never once the upstream got the request "
       "and went silent)",
       false},
      {"STAPLE_MAX_BODY_BYTES", "--max-body-bytes", number(server.max_body_bytes),
       "largest request body", false},
      {"STAPLE_MAX_CONNECTIONS", "--max-connections", "0",
       "open client connections allowed; at the cap the longest-idle one is closed, else new ones "
       "get 503 (0 = the open-file limit minus max(64, limit/8))",
       false},
      {"STAPLE_MAX_CONNECTIONS_PER_PEER", "--max-connections-per-peer", "0",
       "open connections one client address may hold; trusted proxies are exempt (0 = a quarter "
       "of the cap, at least 16; no share when listening on loopback)",
       false},
      {"STAPLE_IDLE_TIMEOUT", "--idle-timeout", SecondsText(server.idle_timeout),
       "seconds a keep-alive connection may wait for its next request", false},
      {"STAPLE_HEADER_TIMEOUT", "--header-timeout", SecondsText(server.header_timeout),
       "seconds a request head may take from its first byte (then 408)", false},
      {"STAPLE_SHUTDOWN_TIMEOUT", "--shutdown-timeout", "30",
       "seconds in-flight requests get at shutdown", false},
      {"STAPLE_LOG_FORMAT", "--log-format", "text", "text or json", false},
      {"STAPLE_ACCESS_LOG", "--access-log", server.access_log ? "true" : "false",
       "one log line per request", false},
  };
}

}  // namespace

Result<std::chrono::seconds> ParsePeriod(std::string_view text) {
  const std::string trimmed = Trim(text);
  const auto invalid =
      MakeError(ErrorKind::kInvalidArgument,
                "expected a period such as \"90 days\", \"12 hours\" or \"30 minutes\"");
  // A separator would make "1 per" apply to the first period only.
  if (trimmed.empty() || trimmed.find_first_of(";,|") != std::string::npos) return invalid;
  // The notation reads a count of 0 as 1 ("0 days" is a day); a period of zero is refused.
  const auto digits = trimmed.find_first_not_of("0123456789");
  if (digits != 0 && trimmed.find_first_not_of('0') >= digits) {
    return MakeError(ErrorKind::kInvalidArgument, "a period must be longer than zero");
  }
  auto parsed = ratelimit::ParseLimits("1 per " + trimmed);
  if (!parsed || parsed->size() != 1) return invalid;
  // Far beyond any sensible retention, and short enough that "now minus the period" stays within
  // the clock's range.
  constexpr std::int64_t kMaxSeconds = std::int64_t{100} * 366 * 86400;
  if (parsed->front().PeriodSeconds() > kMaxSeconds) {
    return MakeError(ErrorKind::kInvalidArgument, "a period can be at most 100 years");
  }
  return std::chrono::seconds(parsed->front().PeriodSeconds());
}

const std::vector<Variable>& Variables() {
  static const std::vector<Variable> kVariables = MakeVariables();
  return kVariables;
}

std::string MaskSecret(const std::string& secret) {
  if (secret.empty()) return "(not set)";
  if (secret.size() < 12) return "***";
  return secret.substr(0, 3) + "..." + secret.substr(secret.size() - 4);
}

std::string MaskUrlPassword(const std::string& url) {
  const auto scheme = url.find("://");
  if (scheme == std::string::npos) return url;
  // The credentials end at the last '@' of the authority (an unencoded '@' in a password).
  const auto authority_end = url.find_first_of("/?#", scheme + 3);
  const auto at = url.rfind('@', authority_end == std::string::npos ? url.size() : authority_end);
  if (at == std::string::npos || at < scheme) return url;
  const auto colon = url.find(':', scheme + 3);
  if (colon == std::string::npos || colon > at) return url;
  return url.substr(0, colon + 1) + "***" + url.substr(at);
}

Result<std::map<std::string, std::string>> ParseDotenv(const std::string& text) {
  std::map<std::string, std::string> entries;
  std::size_t line_number = 0;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    auto end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = Trim(std::string_view(text).substr(pos, end - pos));
    pos = end + 1;
    ++line_number;
    if (line.empty() || line.front() == '#') continue;
    if (line.rfind("export ", 0) == 0) line = Trim(std::string_view(line).substr(7));
    const auto equals = line.find('=');
    const std::string key = equals == std::string::npos ? "" : Trim(line.substr(0, equals));
    if (key.empty() || key.find_first_of(" \t") != std::string::npos) {
      return MakeError(ErrorKind::kInvalidArgument,
                       ".env line " + std::to_string(line_number) + ": expected KEY=VALUE");
    }
    std::string raw = Trim(line.substr(equals + 1));
    std::string value;
    if (!raw.empty() && (raw.front() == '"' || raw.front() == '\'')) {
      const char quote = raw.front();
      std::size_t i = 1;
      bool closed = false;
      for (; i < raw.size(); ++i) {
        const char c = raw[i];
        if (c == quote) {
          closed = true;
          break;
        }
        if (quote == '"' && c == '\\' && i + 1 < raw.size()) {
          const char next = raw[++i];
          value += next == 'n' ? '\n' : next == 't' ? '\t' : next;
        } else {
          value += c;
        }
      }
      if (!closed) {
        return MakeError(ErrorKind::kInvalidArgument,
                         ".env line " + std::to_string(line_number) + ": unterminated quote");
      }
    } else {
      const auto comment = raw.find(" #");
      value = Trim(raw.substr(0, comment));
    }
    entries[key] = value;
  }
  return entries;
}

Result<Config> Load(const Sources& sources) {
  // 1. Resolve every variable's raw text by priority.
  std::map<std::string, std::string> raw;
  Config config;
  for (const auto& variable : Variables()) {
    std::string value = variable.fallback;
    if (auto it = sources.flags.find(variable.name); it != sources.flags.end()) {
      value = it->second;
    } else if (auto env = sources.environment ? sources.environment(variable.name) : std::nullopt) {
      value = *env;
    } else if (auto dot = sources.dotenv.find(variable.name); dot != sources.dotenv.end()) {
      value = dot->second;
    }
    // The admin key is not shown even in part; the upstream key's ends are (as OpenAI does).
    const bool hidden = std::string_view(variable.name) == "STAPLE_ADMIN_KEY";
    config.effective.emplace_back(variable.name, hidden ? (value.empty() ? "(not set)" : "(set)")
                                                 : !variable.secret ? value
                                                 : value.find("://") != std::string::npos
                                                     ? MaskUrlPassword(value)
                                                     : MaskSecret(value));
    raw[variable.name] = std::move(value);
  }
  const auto get = [&raw](const char* name) -> const std::string& { return raw.at(name); };

  // 2. Parse and validate each subsystem's settings.
  auto& server = config.server;
  server.host = Trim(get("STAPLE_HOST"));
  bool on_loopback = false;  // nobody but this machine can connect
  {
    boost::system::error_code ec;
    const auto address =
        net::ip::make_address(server.host == "localhost" ? "127.0.0.1" : server.host, ec);
    if (ec) return Invalid("STAPLE_HOST", get("STAPLE_HOST"), "expected an IP address");
    on_loopback = address.is_loopback();
  }
  auto port = ParseInteger("STAPLE_PORT", get("STAPLE_PORT"), 0, 65535);
  if (!port) return port.error();
  server.port = static_cast<std::uint16_t>(*port);
  auto threads = ParseInteger("STAPLE_THREADS", get("STAPLE_THREADS"), 0, 256);
  if (!threads) return threads.error();
  server.threads = *threads == 0
                       ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))
                       : static_cast<int>(*threads);
  auto body = ParseInteger("STAPLE_MAX_BODY_BYTES", get("STAPLE_MAX_BODY_BYTES"), 1024,
                           std::int64_t{1} << 30);
  if (!body) return body.error();
  server.max_body_bytes = static_cast<std::size_t>(*body);
  {
    // Descriptors kept for listeners, log files, the database, Redis and upstream connections
    // when the cap is set by hand (the default keeps max(64, limit / 8)).
    constexpr std::uint64_t kMinReserve = 64;
    const std::uint64_t file_limit = http::OpenFileLimit();
    auto cap = ParseInteger("STAPLE_MAX_CONNECTIONS", get("STAPLE_MAX_CONNECTIONS"), 0,
                            std::int64_t{1} << 31);
    if (!cap) return cap.error();
    if (*cap == 0) {
      server.max_connections = http::DefaultMaxConnections(file_limit);
    } else if (static_cast<std::uint64_t>(*cap) + kMinReserve > file_limit) {
      return Invalid("STAPLE_MAX_CONNECTIONS", get("STAPLE_MAX_CONNECTIONS"),
                     fmt::format("the open-file limit is {}, and {} descriptors are kept for "
                                 "listeners, logs, the database and upstream connections: set at "
                                 "most {}, or raise the limit (ulimit -n)",
                                 file_limit, kMinReserve,
                                 file_limit > kMinReserve ? file_limit - kMinReserve : 0));
    } else {
      server.max_connections = static_cast<std::size_t>(*cap);
    }
    auto share = ParseInteger("STAPLE_MAX_CONNECTIONS_PER_PEER",
                              get("STAPLE_MAX_CONNECTIONS_PER_PEER"), 0, std::int64_t{1} << 31);
    if (!share) return share.error();
    if (*share == 0) {
      // Listening on loopback, every peer is this machine (typically a reverse proxy in front):
      // a per-address share would only limit that proxy.
      server.max_connections_per_peer =
          on_loopback ? server.max_connections
                      : http::DefaultMaxConnectionsPerPeer(server.max_connections);
    } else if (static_cast<std::size_t>(*share) > server.max_connections) {
      return Invalid("STAPLE_MAX_CONNECTIONS_PER_PEER", get("STAPLE_MAX_CONNECTIONS_PER_PEER"),
                     fmt::format("more than the connection cap ({})", server.max_connections));
    } else {
      server.max_connections_per_peer = static_cast<std::size_t>(*share);
    }
    // The banner shows what the defaults resolved to.
    for (auto& [name, value] : config.effective) {
      if (name == "STAPLE_MAX_CONNECTIONS") value = std::to_string(server.max_connections);
      if (name == "STAPLE_MAX_CONNECTIONS_PER_PEER") {
        value = std::to_string(server.max_connections_per_peer);
      }
    }
  }
  auto idle_timeout = ParseSeconds("STAPLE_IDLE_TIMEOUT", get("STAPLE_IDLE_TIMEOUT"), 0.1, 86400);
  if (!idle_timeout) return idle_timeout.error();
  server.idle_timeout = *idle_timeout;
  auto header_timeout =
      ParseSeconds("STAPLE_HEADER_TIMEOUT", get("STAPLE_HEADER_TIMEOUT"), 0.1, 3600);
  if (!header_timeout) return header_timeout.error();
  server.header_timeout = *header_timeout;
  auto grace = ParseSeconds("STAPLE_SHUTDOWN_TIMEOUT", get("STAPLE_SHUTDOWN_TIMEOUT"), 0, 3600);
  if (!grace) return grace.error();
  server.shutdown_grace = *grace;
  const auto log_format = Trim(get("STAPLE_LOG_FORMAT"));
  if (log_format != "text" && log_format != "json") {
    return Invalid("STAPLE_LOG_FORMAT", get("STAPLE_LOG_FORMAT"), "expected text or json");
  }
  server.json_logs = log_format == "json";
  auto access_log = ParseBool("STAPLE_ACCESS_LOG", get("STAPLE_ACCESS_LOG"));
  if (!access_log) return access_log.error();
  server.access_log = *access_log;

  auto& auth = config.auth;
  const auto auth_mode = Trim(get("STAPLE_AUTH"));
  if (auth_mode == "keys") {
    auth.keys = true;
  } else if (auth_mode.empty()) {
    // Secure by default: open only while nobody but this machine can connect.
    if (!on_loopback) {
      return MakeError(ErrorKind::kInvalidArgument,
                       "STAPLE_AUTH is not set while listening on " + server.host +
                           ": set STAPLE_AUTH=keys (client keys required) or STAPLE_AUTH=off "
                           "(anyone who reaches the port spends the upstream key)");
    }
  } else if (auth_mode != "off") {
    return Invalid("STAPLE_AUTH", get("STAPLE_AUTH"), "expected off or keys");
  }
  auth.admin_key = get("STAPLE_ADMIN_KEY");
  if (!auth.admin_key.empty() && auth.admin_key.size() < 32) {
    // Never echoed: it is a secret.
    return MakeError(ErrorKind::kInvalidArgument,
                     "invalid STAPLE_ADMIN_KEY: it must be at least 32 characters long");
  }
  auto failure_limits =
      ParseLimitList("STAPLE_AUTH_FAILURE_LIMIT", get("STAPLE_AUTH_FAILURE_LIMIT"));
  if (!failure_limits) return failure_limits.error();
  auth.failure_limits = std::move(failure_limits).value();
  {
    const auto& text = get("STAPLE_ALLOWED_HOSTS");
    for (auto& entry : SplitList(text)) {
      for (auto& c : entry) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (entry.find_first_of(" /:@") != std::string::npos) {
        return Invalid("STAPLE_ALLOWED_HOSTS", text, "'" + entry + "' is not a host name");
      }
      auth.allowed_hosts.push_back(entry);
    }
    auth.check_host = !auth.keys && (on_loopback || !auth.allowed_hosts.empty());
  }

  auto& store = config.store;
  store.url = Trim(get("STAPLE_DATABASE_URL"));
  if (store.url.rfind("sqlite:///", 0) == 0 && store.url.size() > 10) {
    // SQLAlchemy's form: three slashes then a relative path, four for an absolute one.
    store.sqlite_path = store.url.substr(10);
  } else if ((store.url.rfind("postgresql://", 0) == 0 && store.url.size() > 13) ||
             (store.url.rfind("postgres://", 0) == 0 && store.url.size() > 11)) {
    // Kept whole for libpq, which validates the rest when the store opens.
  } else {
    return Invalid("STAPLE_DATABASE_URL", MaskUrlPassword(store.url),
                   "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB");
  }
  const auto synchronous = Trim(get("STAPLE_SQLITE_SYNCHRONOUS"));
  if (synchronous != "full" && synchronous != "normal") {
    return Invalid("STAPLE_SQLITE_SYNCHRONOUS", synchronous, "expected full or normal");
  }
  store.sqlite_synchronous_full = synchronous == "full";
  auto cache_mb = ParseInteger("STAPLE_CACHE_MB", get("STAPLE_CACHE_MB"), 1, 1024 * 1024);
  if (!cache_mb) return cache_mb.error();
  store.cache_bytes = static_cast<std::size_t>(*cache_mb) * 1024 * 1024;
  {
    const auto& text = get("STAPLE_RETENTION");
    const auto trimmed = Trim(text);
    if (!trimmed.empty() && trimmed != "off") {
      auto period = ParsePeriod(trimmed);
      if (!period) return Invalid("STAPLE_RETENTION", text, period.error().message);
      store.retention = *period;
    }
  }

  auto& limits = config.limits;
  auto defaults = ParseLimitList("STAPLE_DEFAULT_LIMITS", get("STAPLE_DEFAULT_LIMITS"));
  if (!defaults) return defaults.error();
  limits.default_limits = std::move(defaults).value();
  auto completion = ParseLimitList("STAPLE_COMPLETION_LIMIT", get("STAPLE_COMPLETION_LIMIT"));
  if (!completion) return completion.error();
  limits.completion_limits = std::move(completion).value();
  auto v1 = ParseLimitList("STAPLE_V1_LIMIT", get("STAPLE_V1_LIMIT"));
  if (!v1) return v1.error();
  limits.v1_limits = std::move(v1).value();
  auto responses = ParseLimitList("STAPLE_RESPONSES_LIMIT", get("STAPLE_RESPONSES_LIMIT"));
  if (!responses) return responses.error();
  limits.responses_limits = std::move(responses).value();
  auto tokens = ParseLimitList("STAPLE_TOKEN_LIMITS", get("STAPLE_TOKEN_LIMITS"));
  if (!tokens) return tokens.error();
  limits.token_limits = std::move(tokens).value();
  auto reserve = ParseInteger("STAPLE_TOKEN_COMPLETION_RESERVE",
                              get("STAPLE_TOKEN_COMPLETION_RESERVE"), 0, 100'000'000);
  if (!reserve) return reserve.error();
  limits.token_completion_reserve = static_cast<std::uint64_t>(*reserve);
  auto strategy = ratelimit::ParseStrategy(Trim(get("STAPLE_RATELIMIT_STRATEGY")));
  if (!strategy) {
    return Invalid("STAPLE_RATELIMIT_STRATEGY", get("STAPLE_RATELIMIT_STRATEGY"),
                   strategy.error().message);
  }
  limits.strategy = *strategy;
  limits.storage_url = Trim(get("STAPLE_RATELIMIT_STORAGE"));
  if (limits.storage_url != "memory://") {
    auto redis = ratelimit::ParseRedisAddress(limits.storage_url);
    if (!redis) {
      return Invalid("STAPLE_RATELIMIT_STORAGE", MaskUrlPassword(limits.storage_url),
                     "expected memory:// or redis://host:port[/db]: " + redis.error().message);
    }
  }
  const auto failure = Trim(get("STAPLE_RATELIMIT_FAILURE"));
  if (failure != "closed" && failure != "open") {
    return Invalid("STAPLE_RATELIMIT_FAILURE", failure, "expected closed or open");
  }
  limits.fail_open = failure == "open";
  {
    const auto& text = get("STAPLE_TRUSTED_PROXIES");
    for (auto& entry : SplitList(text)) {
      if (!ValidProxy(entry)) {
        return Invalid("STAPLE_TRUSTED_PROXIES", text,
                       "'" + entry + "' is not an IP address or CIDR network");
      }
      limits.trusted_proxies.push_back(entry);
    }
  }
  auto ipv6_prefix = ParseInteger("STAPLE_IPV6_PREFIX", get("STAPLE_IPV6_PREFIX"), 1, 128);
  if (!ipv6_prefix) return ipv6_prefix.error();
  limits.ipv6_prefix = static_cast<int>(*ipv6_prefix);
  auto max_clients =
      ParseInteger("STAPLE_LIMITER_MAX_CLIENTS", get("STAPLE_LIMITER_MAX_CLIENTS"), 1, 100'000'000);
  if (!max_clients) return max_clients.error();
  limits.max_clients = static_cast<std::size_t>(*max_clients);

  auto& chat = config.chat;
  chat.model = Trim(get("OPENAI_MODEL"));
  if (chat.model.empty()) return Invalid("OPENAI_MODEL", "", "a model name is required");
  chat.system_prompt = get("STAPLE_SYSTEM_PROMPT");
  auto max_messages =
      ParseInteger("STAPLE_HISTORY_MAX_MESSAGES", get("STAPLE_HISTORY_MAX_MESSAGES"), 0, 1'000'000);
  if (!max_messages) return max_messages.error();
  chat.history_max_messages = static_cast<std::size_t>(*max_messages);
  auto max_chars = ParseInteger("STAPLE_HISTORY_MAX_CHARS", get("STAPLE_HISTORY_MAX_CHARS"), 0,
                                std::int64_t{1} << 40);
  if (!max_chars) return max_chars.error();
  chat.history_max_chars = static_cast<std::size_t>(*max_chars);

  auto& upstream = config.upstream;
  upstream.base_url = Trim(get("OPENAI_BASE_URL"));
  while (!upstream.base_url.empty() && upstream.base_url.back() == '/')
    upstream.base_url.pop_back();
  if (upstream.base_url.rfind("http://", 0) != 0 && upstream.base_url.rfind("https://", 0) != 0) {
    return Invalid("OPENAI_BASE_URL", upstream.base_url, "expected an http:// or https:// URL");
  }
  upstream.api_key = Trim(get("OPENAI_API_KEY"));
  auto total = ParseSeconds("STAPLE_UPSTREAM_TIMEOUT", get("STAPLE_UPSTREAM_TIMEOUT"), 0.05, 3600);
  if (!total) return total.error();
  upstream.total_timeout = *total;
  auto connect = ParseSeconds("STAPLE_UPSTREAM_CONNECT_TIMEOUT",
                              get("STAPLE_UPSTREAM_CONNECT_TIMEOUT"), 0.05, 600);
  if (!connect) return connect.error();
  upstream.connect_timeout = *connect;
  auto first_byte = ParseSeconds("STAPLE_UPSTREAM_FIRST_BYTE_TIMEOUT",
                                 get("STAPLE_UPSTREAM_FIRST_BYTE_TIMEOUT"), 0.05, 3600);
  if (!first_byte) return first_byte.error();
  upstream.first_byte_timeout = *first_byte;
  auto idle =
      ParseSeconds("STAPLE_UPSTREAM_IDLE_TIMEOUT", get("STAPLE_UPSTREAM_IDLE_TIMEOUT"), 0.05, 3600);
  if (!idle) return idle.error();
  upstream.idle_timeout = *idle;
  auto stream_total = ParseSeconds("STAPLE_UPSTREAM_STREAM_TIMEOUT",
                                   get("STAPLE_UPSTREAM_STREAM_TIMEOUT"), 0.05, 24 * 3600);
  if (!stream_total) return stream_total.error();
  upstream.stream_timeout = *stream_total;
  auto retries = ParseInteger("STAPLE_UPSTREAM_RETRIES", get("STAPLE_UPSTREAM_RETRIES"), 0, 10);
  if (!retries) return retries.error();
  upstream.max_retries = static_cast<int>(*retries);

  const std::string client_kind = Trim(get("STAPLE_UPSTREAM_CLIENT"));
  auto kind = upstream::ParseClientKind(client_kind);
  if (!kind) return Invalid("STAPLE_UPSTREAM_CLIENT", client_kind, "expected auto, asio or curl");
  upstream.client = *kind;

  auto demo = ParseBool("STAPLE_DEMO", get("STAPLE_DEMO"));
  if (!demo) return demo.error();
  upstream.demo = *demo;

  upstream.routes_file = Trim(get("STAPLE_UPSTREAMS"));
  if (upstream.demo && !upstream.routes_file.empty()) {
    return MakeError(ErrorKind::kInvalidArgument,
                     "STAPLE_DEMO and STAPLE_UPSTREAMS exclude each other: the demo upstream "
                     "answers everything");
  }
  if (!upstream.routes_file.empty()) {
    // Every entry starts from the settings above; its key comes from the variable it names,
    // looked up where OPENAI_API_KEY would be (the environment, then the .env file).
    upstream::Settings entry_defaults;
    entry_defaults.connect_timeout = upstream.connect_timeout;
    entry_defaults.first_byte_timeout = upstream.first_byte_timeout;
    entry_defaults.idle_timeout = upstream.idle_timeout;
    entry_defaults.total_timeout = upstream.total_timeout;
    entry_defaults.stream_timeout = upstream.stream_timeout;
    entry_defaults.max_retries = upstream.max_retries;
    Environment environment = [&sources](const std::string& name) -> std::optional<std::string> {
      if (sources.environment) {
        if (auto value = sources.environment(name)) return value;
      }
      if (auto found = sources.dotenv.find(name); found != sources.dotenv.end()) {
        return found->second;
      }
      return std::nullopt;
    };
    auto routes = LoadUpstreams(upstream.routes_file, entry_defaults, environment);
    if (!routes) return routes.error();
    upstream.routes = std::move(routes).value();
  }
  return config;
}

}  // namespace staple::config
