#include "app/app.h"

#include <fmt/format.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "api/admission.h"
#include "api/errors.h"
#include "api/handlers.h"
#include "api/openai_handlers.h"
#include "api/playground.h"
#include "chat/conversation_service.h"
#include "chat/openai_proxy.h"
#include "config/config.h"
#include "http/router.h"
#include "http/server.h"
#include "observe/log.h"
#include "observe/metrics.h"
#include "ratelimit/clock.h"
#include "ratelimit/memory/memory_rate_limiter.h"
#include "ratelimit/redis/redis_rate_limiter.h"
#include "store/postgres/postgres_conversation_store.h"
#include "store/sqlite/sqlite_conversation_store.h"
#include "upstream/curl_client.h"

namespace staple::app {
namespace {

constexpr const char* kVersion = "0.1.0";
constexpr const char* kOpenAIBaseUrl = "https://api.openai.com/v1";

Result<std::map<std::string, std::string>> ReadDotenv(const std::string& path) {
  std::ifstream file(path);
  if (!file) return std::map<std::string, std::string>{};  // a missing .env is fine
  std::stringstream text;
  text << file.rdbuf();
  auto parsed = config::ParseDotenv(text.str());
  if (!parsed) return MakeError(ErrorKind::kInvalidArgument, path + ": " + parsed.error().message);
  return parsed;
}

// The conversation store the configuration names: PostgreSQL for postgresql:// and postgres://
// URLs, else the SQLite file.
Result<std::unique_ptr<store::ConversationStore>> OpenStore(const config::StoreSettings& settings) {
  if (settings.url.rfind("postgresql://", 0) == 0 || settings.url.rfind("postgres://", 0) == 0) {
    store::PostgresStoreOptions options;
    options.url = settings.url;
    auto opened = store::PostgresConversationStore::Open(options);
    if (!opened) return opened.error();
    return std::unique_ptr<store::ConversationStore>(std::move(opened).value());
  }
  store::SqliteStoreOptions options;
  options.path = settings.sqlite_path;
  options.synchronous = settings.sqlite_synchronous_full ? store::SqliteSynchronous::kFull
                                                         : store::SqliteSynchronous::kNormal;
  // The file grows with every commit, and mapped readers then keep remapping it (munmap showed up
  // in the profile of the seed endpoint): plain reads are cheaper here.
  options.mmap_size = 0;
  auto opened = store::SqliteConversationStore::Open(options);
  if (!opened) return opened.error();
  return std::unique_ptr<store::ConversationStore>(std::move(opened).value());
}

// glibc hands the free memory at the top of a thread's heap back to the kernel as soon as 128 KiB
// of it are free, and the next request faults the same pages in again: about 4 page faults per
// request on the seed endpoint with a stored history, in the kernel's page-fault and madvise
// paths. Freed memory is kept up to kMallocTrimThreshold per heap instead. A fixed trim threshold
// also stops glibc from adapting its mmap threshold, so that one is set as well: blocks below
// kMallocMmapThreshold (request and response bodies) come from the heap, not from new mappings.
constexpr int kMallocTrimThreshold = 64 * 1024 * 1024;
constexpr int kMallocMmapThreshold = 4 * 1024 * 1024;

void KeepFreedMemory() {
  mallopt(M_TRIM_THRESHOLD, kMallocTrimThreshold);
  mallopt(M_MMAP_THRESHOLD, kMallocMmapThreshold);
}

// Runs the gateway with a validated configuration until a stop signal arrives.
int Serve(const config::Config& config, const sigset_t& stop_signals) {
  const auto started = std::chrono::steady_clock::now();
  KeepFreedMemory();
  observe::InitLogging(config.server.json_logs ? observe::LogFormat::kJson
                                               : observe::LogFormat::kText);
  observe::Metrics metrics;

  // 1. Back ends: the conversation store, the limiter, the upstream client.
  auto opened = OpenStore(config.store);
  if (!opened) {
    observe::Error("cannot open the conversation store", {{"error", opened.error().message}});
    return 1;
  }
  std::unique_ptr<store::ConversationStore> store = std::move(opened).value();
  metrics.AddGauge("staple_store_pending_writes", "Turns accepted but not yet committed.",
                   [s = store.get()] { return static_cast<double>(s->PendingWrites()); });

  ratelimit::SystemClock clock;
  std::unique_ptr<ratelimit::RateLimiter> limiter_storage;
  if (config.limits.storage_url == "memory://") {
    limiter_storage = std::make_unique<ratelimit::MemoryRateLimiter>(clock, config.limits.strategy);
  } else {
    // Validated with the configuration. Redis being down at start is not fatal: calls fail with
    // kUnavailable (the fail-open/closed policy applies, /readyz says 503) until it answers.
    auto redis_options = ratelimit::ParseRedisUrl(config.limits.storage_url);
    limiter_storage = std::make_unique<ratelimit::RedisRateLimiter>(
        clock, config.limits.strategy, std::move(redis_options).value());
  }
  ratelimit::RateLimiter& limiter = *limiter_storage;

  upstream::Settings upstream_settings;
  upstream_settings.base_url = config.upstream.base_url;
  upstream_settings.api_key = config.upstream.api_key;
  upstream_settings.total_timeout = config.upstream.total_timeout;
  upstream_settings.first_byte_timeout = config.upstream.first_byte_timeout;
  upstream_settings.idle_timeout = config.upstream.idle_timeout;
  upstream_settings.connect_timeout = config.upstream.connect_timeout;
  upstream_settings.max_retries = config.upstream.max_retries;
  upstream::CurlClient upstream_client(upstream_settings);

  // 2. Services and routes.
  const bool key_missing =
      config.upstream.api_key.empty() && config.upstream.base_url == kOpenAIBaseUrl;
  chat::TurnSettings turn_settings;
  turn_settings.window = {config.chat.history_max_messages, config.chat.history_max_chars};
  turn_settings.key_missing = key_missing;
  turn_settings.api_key = config.upstream.api_key;
  chat::TurnPipeline turns(*store, upstream_client, metrics, turn_settings);
  chat::ServiceSettings chat_settings;
  chat_settings.model = config.chat.model;
  chat_settings.system_prompt = config.chat.system_prompt;
  chat::ConversationService conversations(turns, chat_settings);
  chat::OpenAIProxy openai_proxy(turns, upstream_client);

  api::AdmissionSettings admission_settings;
  admission_settings.default_limits = config.limits.default_limits;
  admission_settings.fail_open = config.limits.fail_open;
  admission_settings.trusted_proxies = config.limits.trusted_proxies;
  api::Admission admission(limiter, metrics, admission_settings);
  api::TokenLimitSettings token_settings;
  token_settings.limits = config.limits.token_limits;
  token_settings.completion_reserve = config.limits.token_completion_reserve;
  token_settings.fail_open = config.limits.fail_open;
  api::TokenLimits token_limits(limiter, metrics, token_settings);

  http::Router router(api::FormatError);
  api::RegisterRoutes(router, api::Dependencies{conversations, *store, limiter, metrics, admission,
                                                token_limits, config.limits.completion_limits});
  api::RegisterPlayground(router);
  api::RegisterOpenAIRoutes(router, api::OpenAIDependencies{openai_proxy, admission, token_limits,
                                                            config.limits.v1_limits});

  // 3. Listen and serve.
  http::ServerOptions server_options;
  server_options.host = config.server.host;
  server_options.port = config.server.port;
  server_options.threads = config.server.threads;
  server_options.max_body_bytes = config.server.max_body_bytes;
  server_options.access_log = config.server.access_log;
  http::Server server(server_options, router, metrics);
  if (auto bound = server.Bind(); !bound) {
    observe::Error("cannot start", {{"error", bound.error().message}});
    store->Close();
    return 1;
  }
  server.Start();

  const auto ready_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  observe::Fields banner;
  for (const auto& [name, value] : config.effective) banner.emplace_back(name, value);
  observe::Info(fmt::format("Staple {} listening on http://{}:{}", kVersion, config.server.host,
                            server.port()),
                {{"threads", config.server.threads}, {"ready_ms", std::round(ready_ms * 10) / 10}});
  observe::Info("configuration", banner);
  if (key_missing) {
    observe::Warn("OPENAI_API_KEY is not set: /openai-completion answers 500 until it is");
  }

  // 4. Wait for SIGINT/SIGTERM, then stop gracefully: in-flight requests finish, their turns are
  // committed, the writer is flushed.
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  observe::Info("shutting down", {{"signal", signal_number == SIGINT ? "SIGINT" : "SIGTERM"}});
  server.Shutdown(config.server.shutdown_grace);
  upstream_client.Shutdown();
  store->Close();
  observe::Info("stopped");
  observe::FlushLogs();
  return 0;
}

}  // namespace

int Main(int argc, char** argv) {
  CLI::App cli{"Staple: a conversational gateway for OpenAI-compatible chat APIs", "staple"};
  cli.set_version_flag("--version", kVersion);
  cli.require_subcommand(1);
  auto* serve = cli.add_subcommand("serve", "Run the gateway (flags override the environment)");
  std::string env_file = ".env";
  serve->add_option("--env-file", env_file, "file of KEY=VALUE defaults")->capture_default_str();
  std::map<std::string, std::string> flag_values;
  std::vector<std::pair<std::string, CLI::Option*>> flag_options;
  for (const auto& variable : config::Variables()) {
    auto* option = serve->add_option(
        variable.flag, flag_values[variable.name],
        fmt::format("{} [env {}, default '{}']", variable.help, variable.name, variable.fallback));
    flag_options.emplace_back(variable.name, option);
  }
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e) == 0 ? 0 : 2;
  }

  config::Sources sources;
  for (const auto& [name, option] : flag_options) {
    if (option->count() > 0) sources.flags[name] = flag_values[name];
  }
  sources.environment = [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    return value == nullptr ? std::nullopt : std::optional<std::string>(value);
  };
  auto dotenv = ReadDotenv(env_file);
  if (!dotenv) {
    std::cerr << "staple: " << dotenv.error().message << '\n';
    return 2;
  }
  sources.dotenv = std::move(dotenv).value();
  auto loaded = config::Load(sources);
  if (!loaded) {
    std::cerr << "staple: " << loaded.error().message << '\n';
    return 2;
  }

  // Stop signals are received by sigwait in this thread only: block them before any thread starts
  // so every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  try {
    return Serve(*loaded, stop_signals);
  } catch (const std::exception& e) {
    std::cerr << "staple: start-up failed: " << e.what() << '\n';
    return 1;
  }
}

}  // namespace staple::app
