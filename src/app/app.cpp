#include "app/app.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "api/admin.h"
#include "api/admission.h"
#include "api/auth.h"
#include "api/console.h"
#include "api/errors.h"
#include "api/handlers.h"
#include "api/openai_handlers.h"
#include "api/playground.h"
#include "api/responses_handlers.h"
#include "app/demo_upstream.h"
#include "chat/chain_cache.h"
#include "chat/conversation_service.h"
#include "chat/openai_proxy.h"
#include "common/allocator.h"
#include "config/config.h"
#include "http/connection_limits.h"
#include "http/router.h"
#include "http/server.h"
#include "keys/keys.h"
#include "observe/log.h"
#include "observe/metrics.h"
#include "ratelimit/clock.h"
#include "ratelimit/memory/memory_rate_limiter.h"
#include "ratelimit/redis/redis_rate_limiter.h"
#include "store/postgres/postgres_conversation_store.h"
#include "store/retention.h"
#include "store/sqlite/sqlite_conversation_store.h"
#include "store/sqlite/sqlite_maintenance.h"
#include "upstream/make_client.h"
#include "upstream/router.h"

namespace staple::app {
namespace {

constexpr const char* kOpenAIBaseUrl = "https://api.openai.com/v1";
// How often each replica looks for key changes made elsewhere (a revocation is in force everywhere
// within about this long).
constexpr std::chrono::milliseconds kKeyPollInterval{1000};

// --env-file's help: "" (the flag not given) reads ./.env when there is one; a file the flag
// names must exist.
constexpr const char* kEnvFileHelp =
    "file of KEY=VALUE defaults (default: .env in the working directory, if there is one)";

Result<std::map<std::string, std::string>> ReadDotenv(const std::string& flag_value) {
  const std::string path = flag_value.empty() ? ".env" : flag_value;
  std::ifstream file(path);
  if (!file) {
    if (flag_value.empty()) return std::map<std::string, std::string>{};  // no .env is fine
    return MakeError(ErrorKind::kInvalidArgument,
                     "--env-file " + path + ": cannot read the file: " + std::strerror(errno));
  }
  std::stringstream text;
  text << file.rdbuf();
  auto parsed = config::ParseDotenv(text.str());
  if (!parsed) return MakeError(ErrorKind::kInvalidArgument, path + ": " + parsed.error().message);
  return parsed;
}

// STAPLE_CACHE_MB, split among the caches that grow with the number of conversations:
// - 3/8 the SQLite store's HistoryCache: it spares a history read its ~40 table-page reads, the
//   most expensive thing a continued conversation does;
// - 3/8 the serialized messages of ConversationService (CPU only: a miss serializes again).
//   Both hold the same messages of a continued conversation at about the same cost each (the
//   text plus some 110-140 bytes), so equal shares give both the same capacity; with 1/2 and 1/4
//   the serialized messages ran out first and their misses cost CPU on every request;
// - 1/8 the Responses API's chains (chat::ChainCache: a miss reads the chain from the store);
// - 1/8 SQLite's page caches, shared equally by the writer's and the readers' connections (a
//   reader's cache is emptied by every commit anyway, so more buys little).
// With PostgreSQL the history and page shares stay unused (the database caches on its side).
struct CacheBudget {
  std::size_t history = 0;
  std::size_t fragments = 0;
  std::size_t chains = 0;
  std::size_t page_cache_per_connection = 0;
};

CacheBudget SplitCacheBudget(std::size_t bytes, std::size_t connections) {
  CacheBudget budget;
  budget.fragments = bytes * 3 / 8;
  budget.chains = bytes / 8;
  const std::size_t pages = bytes / 8;
  budget.page_cache_per_connection =
      std::max<std::size_t>(64 * 1024, pages / std::max<std::size_t>(1, connections));
  budget.history = std::max<std::size_t>(1, bytes - budget.fragments - budget.chains - pages);
  return budget;
}

bool IsPostgresUrl(const std::string& url) {
  return url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
}

// Retention on SQLite gives deleted rows' pages back to the file system, which needs incremental
// auto-vacuum. New files get it from the store; an older file is switched once, here, before the
// store opens: a VACUUM that rewrites the whole file.
Status PrepareSqliteForRetention(const config::StoreSettings& settings) {
  auto mode = store::ReadAutoVacuum(settings.sqlite_path);
  if (!mode) return mode.error();
  if (!*mode || **mode == store::AutoVacuum::kIncremental) return Ok();
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(settings.sqlite_path, ec);
  observe::Info(
      "retention: switching the SQLite database to incremental auto-vacuum (a one-time "
      "VACUUM that rewrites the file and needs as much free disk space)",
      {{"path", settings.sqlite_path}, {"bytes", ec ? 0 : bytes}});
  const auto started = std::chrono::steady_clock::now();
  if (auto enabled = store::EnableIncrementalVacuum(settings.sqlite_path, std::chrono::seconds(30));
      !enabled) {
    return enabled;
  }
  const auto seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  observe::Info("retention: incremental auto-vacuum enabled",
                {{"path", settings.sqlite_path}, {"seconds", std::round(seconds * 10) / 10}});
  return Ok();
}

// How often retention runs: every minute, or every half period for periods under two minutes.
std::chrono::milliseconds RetentionInterval(std::chrono::seconds period) {
  return std::min<std::chrono::milliseconds>(std::chrono::minutes(1), period / 2);
}

// The conversation store the configuration names: PostgreSQL for postgresql:// and postgres://
// URLs, else the SQLite file.
Result<std::unique_ptr<store::ConversationStore>> OpenStore(const config::StoreSettings& settings) {
  if (IsPostgresUrl(settings.url)) {
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
  const CacheBudget budget = SplitCacheBudget(settings.cache_bytes, options.reader_threads + 1);
  options.history_cache_bytes = budget.history;
  options.page_cache_bytes = budget.page_cache_per_connection;
  auto opened = store::SqliteConversationStore::Open(options);
  if (!opened) return opened.error();
  return std::unique_ptr<store::ConversationStore>(std::move(opened).value());
}

// Runs the gateway with a validated configuration until a stop signal arrives.
int Serve(const config::Config& config, const sigset_t& stop_signals) {
  const auto started = std::chrono::steady_clock::now();
  common::TuneAllocator();
  observe::InitLogging(config.server.json_logs ? observe::LogFormat::kJson
                                               : observe::LogFormat::kText);
  observe::Metrics metrics;

  // 1. Back ends: the conversation store, the limiter, the upstream client.
  if (config.store.retention.count() > 0 && !IsPostgresUrl(config.store.url)) {
    if (auto prepared = PrepareSqliteForRetention(config.store); !prepared) {
      observe::Error("cannot prepare the database for retention",
                     {{"error", prepared.error().message}});
      return 1;
    }
  }
  auto opened = OpenStore(config.store);
  if (!opened) {
    observe::Error("start-up failed", {{"error", opened.error().message}});
    return 1;
  }
  std::unique_ptr<store::ConversationStore> store = std::move(opened).value();
  metrics.AddGauge("staple_store_pending_writes", "Turns accepted but not yet committed.",
                   [s = store.get()] { return static_cast<double>(s->PendingWrites()); });
  std::atomic<std::int64_t> retention_deleted{0};
  metrics.AddCounter(
      "staple_retention_deleted_total",
      "Conversation messages deleted by retention (STAPLE_RETENTION).",
      [&retention_deleted] { return static_cast<double>(retention_deleted.load()); });

  ratelimit::SystemClock clock;
  std::unique_ptr<ratelimit::RateLimiter> limiter_storage;
  if (config.limits.storage_url == "memory://") {
    // STAPLE_LIMITER_MAX_CLIENTS counts clients; the limiter counts one entry per limit a client
    // is counted against (global, route, token and failed-authentication limits).
    const std::size_t per_client = std::max<std::size_t>(
        1, config.limits.default_limits.size() +
               std::max({config.limits.completion_limits.size(), config.limits.v1_limits.size(),
                         config.limits.responses_limits.size()}) +
               config.limits.token_limits.size() +
               (config.auth.keys ? config.auth.failure_limits.size() : 0));
    auto memory = std::make_unique<ratelimit::MemoryRateLimiter>(
        clock, config.limits.strategy, config.limits.max_clients * per_client);
    metrics.AddCounter(
        "staple_limiter_evictions_total",
        "Limiter entries forgotten at STAPLE_LIMITER_MAX_CLIENTS while still counting.",
        [m = memory.get()] { return static_cast<double>(m->Evictions()); });
    metrics.AddGauge("staple_limiter_entries", "Entries held by the in-process limiter.",
                     [m = memory.get()] { return static_cast<double>(m->EntryCount()); });
    limiter_storage = std::move(memory);
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
  upstream_settings.stream_timeout = config.upstream.stream_timeout;
  upstream_settings.connect_timeout = config.upstream.connect_timeout;
  upstream_settings.max_retries = config.upstream.max_retries;
  // One upstream (OPENAI_BASE_URL), or a Router over the upstreams of STAPLE_UPSTREAMS, each
  // with a client of its own.
  std::unique_ptr<upstream::Client> upstream_owner;
  upstream::Router* upstream_router = nullptr;
  std::vector<std::string> upstream_keys{config.upstream.api_key};
  if (config.upstream.routes) {
    auto make_client = [kind = config.upstream.client](const upstream::UpstreamEntry& entry) {
      return upstream::MakeClient(entry.settings, kind);
    };
    auto routed = std::make_unique<upstream::Router>(*config.upstream.routes, make_client,
                                                     config.upstream.total_timeout);
    if (!routed->Serves(config.chat.model)) {
      observe::Error("cannot start",
                     {{"error", "OPENAI_MODEL='" + config.chat.model +
                                    "' (the model of /openai-completion) is served by no upstream "
                                    "of " +
                                    config.upstream.routes_file}});
      store->Close();
      return 1;
    }
    std::vector<std::string> names;
    for (const auto& entry : config.upstream.routes->upstreams) {
      upstream_keys.push_back(entry.settings.api_key);
      names.push_back(entry.name + " (" + entry.settings.base_url + ")");
    }
    observe::Info("upstreams", {{"file", config.upstream.routes_file},
                                {"upstreams", fmt::format("{}", fmt::join(names, ", "))}});
    metrics.AddFamilies([r = routed.get()](std::string& out) { r->RenderMetrics(out); });
    upstream_router = routed.get();
    upstream_owner = std::move(routed);
  } else if (config.upstream.demo) {
    upstream_owner = std::make_unique<DemoUpstream>();
  } else {
    upstream_owner = upstream::MakeClient(upstream_settings, config.upstream.client);
    observe::Info("upstream client",
                  {{"client", std::string(upstream::ClientKindName(upstream::ResolveClientKind(
                                  config.upstream.client, upstream_settings.base_url)))}});
  }
  upstream::Client& upstream_client = *upstream_owner;

  // 2. Services and routes.
  const bool key_missing = !upstream_router && !config.upstream.demo &&
                           config.upstream.api_key.empty() &&
                           config.upstream.base_url == kOpenAIBaseUrl;
  chat::TurnSettings turn_settings;
  turn_settings.window = {config.chat.history_max_messages, config.chat.history_max_chars};
  turn_settings.key_missing = key_missing;
  turn_settings.api_keys = upstream_keys;
  if (upstream_router) {
    turn_settings.serves_model = [upstream_router](std::string_view model) {
      return upstream_router->Serves(model);
    };
  }
  chat::TurnPipeline turns(*store, upstream_client, metrics, turn_settings);
  chat::ServiceSettings chat_settings;
  chat_settings.model = config.chat.model;
  chat_settings.system_prompt = config.chat.system_prompt;
  chat_settings.fragment_cache_bytes = SplitCacheBudget(config.store.cache_bytes, 1).fragments;
  chat::ConversationService conversations(turns, chat_settings);
  std::optional<std::vector<std::string>> listed_models;
  if (upstream_router) listed_models = upstream_router->ListedModels();
  chat::OpenAIProxy openai_proxy(turns, upstream_client, std::move(listed_models));

  // Client keys: held in memory by the registry, which polls the database for changes made on
  // other replicas. It runs when keys are required or the admin API is on.
  std::unique_ptr<keys::KeyRegistry> key_registry;
  if (config.auth.keys || !config.auth.admin_key.empty()) {
    auto key_store = keys::OpenKeyStore(config.store.url, config.store.sqlite_path);
    if (!key_store) {
      observe::Error("cannot open the key tables", {{"error", key_store.error().message}});
      store->Close();
      return 1;
    }
    key_registry =
        std::make_unique<keys::KeyRegistry>(std::move(key_store).value(), kKeyPollInterval);
    if (Status started_keys = key_registry->Start(); !started_keys) {
      observe::Error("cannot load the client keys", {{"error", started_keys.error().message}});
      store->Close();
      return 1;
    }
  }
  std::optional<api::Authenticator> authenticator;
  if (config.auth.keys) {
    authenticator.emplace(*key_registry, limiter,
                          api::AuthSettings{true, config.auth.failure_limits});
  }
  keys::KeyRegistry* usage = config.auth.keys ? key_registry.get() : nullptr;

  api::AdmissionSettings admission_settings;
  admission_settings.default_limits = config.limits.default_limits;
  admission_settings.fail_open = config.limits.fail_open;
  admission_settings.trusted_proxies = config.limits.trusted_proxies;
  admission_settings.ipv6_prefix = config.limits.ipv6_prefix;
  admission_settings.check_host = config.auth.check_host;
  admission_settings.allowed_hosts = config.auth.allowed_hosts;
  api::Admission admission(limiter, metrics, admission_settings,
                           authenticator ? &*authenticator : nullptr, usage);
  api::TokenLimitSettings token_settings;
  token_settings.limits = config.limits.token_limits;
  token_settings.completion_reserve = config.limits.token_completion_reserve;
  token_settings.fail_open = config.limits.fail_open;
  api::TokenLimits token_limits(limiter, metrics, token_settings, usage);

  http::Router router(api::FormatError);
  api::Dependencies seed_dependencies{conversations,
                                      *store,
                                      limiter,
                                      metrics,
                                      admission,
                                      token_limits,
                                      config.limits.completion_limits,
                                      {}};
  if (upstream_router) {
    seed_dependencies.upstream_states = [upstream_router] {
      std::vector<std::pair<std::string, std::string>> states;
      for (const auto& health : upstream_router->Health()) {
        states.emplace_back(health.name, health.cooling_down ? "cooling down" : "ok");
      }
      return states;
    };
  }
  api::RegisterRoutes(router, std::move(seed_dependencies));
  api::RegisterPlayground(router);
  api::RegisterOpenAIRoutes(router, api::OpenAIDependencies{openai_proxy, admission, token_limits,
                                                            config.limits.v1_limits});
  // Chains of stored responses, forgotten within a second of a delete by any replica.
  chat::ChainCache chains(SplitCacheBudget(config.store.cache_bytes, 1).chains);
  metrics.AddCounter("staple_response_chain_cache_hits_total",
                     "POST /v1/responses with previous_response_id whose chain was in memory.",
                     [&chains] { return static_cast<double>(chains.hits()); });
  metrics.AddCounter("staple_response_chain_cache_misses_total",
                     "POST /v1/responses with previous_response_id whose chain was looked up in "
                     "memory and not found there (then read from the store).",
                     [&chains] { return static_cast<double>(chains.misses()); });
  metrics.AddGauge("staple_response_chain_cache_bytes",
                   "Memory held by the response chains kept in memory.",
                   [&chains] { return static_cast<double>(chains.bytes()); });
  api::RegisterResponsesRoutes(router,
                               api::ResponsesDependencies{turns, *store, admission, token_limits,
                                                          config.limits.responses_limits, &chains});
  // The operator console (/console) and the admin API's figures behind it.
  observe::StatsHistory stats(metrics);
  api::RegisterConsole(router);
  if (key_registry) {
    api::RegisterAdminRoutes(router, *key_registry,
                             api::AdminSettings{config.auth.admin_key, store.get(), &stats});
  }

  // 3. Listen and serve.
  http::ServerOptions server_options;
  server_options.host = config.server.host;
  server_options.port = config.server.port;
  server_options.threads = config.server.threads;
  server_options.max_body_bytes = config.server.max_body_bytes;
  server_options.access_log = config.server.access_log;
  server_options.max_connections = config.server.max_connections;
  server_options.max_connections_per_peer = config.server.max_connections_per_peer;
  // A trusted proxy carries many clients: it has no per-address share.
  server_options.unshared_peers = config.limits.trusted_proxies;
  server_options.idle_timeout = config.server.idle_timeout;
  server_options.header_timeout = config.server.header_timeout;
  http::Server server(server_options, router, metrics);
  if (auto bound = server.Bind(); !bound) {
    observe::Error("cannot start", {{"error", bound.error().message}});
    store->Close();
    return 1;
  }
  server.Start();
  stats.Start();

  // Retention: the first run now, then one every interval, on a thread of its own.
  std::unique_ptr<store::RetentionTask> retention;
  if (config.store.retention.count() > 0) {
    store::RetentionOptions retention_options;
    retention_options.period = config.store.retention;
    retention_options.interval = RetentionInterval(config.store.retention);
    // Runs that delete nothing (most of them) are not logged.
    auto report = [&retention_deleted](const store::RetentionRun& run) {
      retention_deleted.fetch_add(run.deleted);
      if (run.error) {
        observe::Warn("retention run failed",
                      {{"deleted", run.deleted}, {"error", run.error->message}});
      } else if (run.deleted > 0) {
        observe::Info("retention run", {{"deleted", run.deleted},
                                        {"steps", static_cast<std::int64_t>(run.steps)},
                                        {"free_pages", run.free_pages}});
      }
    };
    observe::Info("retention on: conversation messages older than the period are deleted",
                  {{"period_seconds", config.store.retention.count()},
                   {"interval_ms", retention_options.interval.count()}});
    retention = std::make_unique<store::RetentionTask>(*store, std::move(retention_options),
                                                       std::move(report));
    if (Status started_retention = retention->Start(); !started_retention) {
      observe::Error("cannot start retention", {{"error", started_retention.error().message}});
      server.Shutdown(config.server.shutdown_grace);
      upstream_client.Shutdown();
      if (key_registry) key_registry->Stop();
      store->Close();
      return 1;
    }
  }

  const auto ready_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  // The configuration line names what differs from the defaults (`staple serve --help` lists
  // them), so it stays a few settings long instead of every variable.
  observe::Fields banner;
  std::int64_t at_default = 0;
  const auto& variables = config::Variables();
  for (const auto& [name, value] : config.effective) {
    const auto variable =
        std::find_if(variables.begin(), variables.end(),
                     [&name = name](const config::Variable& v) { return v.name == name; });
    if (value == "(not set)" || (variable != variables.end() && value == variable->fallback)) {
      ++at_default;
      continue;
    }
    banner.emplace_back(name, value);
  }
  banner.emplace_back("settings_at_default", at_default);
  observe::Info(fmt::format("Staple {} listening on http://{}:{}", observe::BuildVersion(),
                            config.server.host, server.port()),
                {{"threads", config.server.threads},
                 {"allocator", common::AllocatorName()},
                 {"ready_ms", std::round(ready_ms * 10) / 10}});
  observe::Info("configuration", banner);
  if (key_missing) {
    observe::Warn(
        "OPENAI_API_KEY is not set: completions answer 500 until it is (to try Staple without "
        "a key: staple serve --demo)");
  }
  if (config.upstream.demo) {
    observe::Warn(
        "demo mode: answers come from the built-in demo upstream, which echoes the last message; "
        "no model is asked and no key is used");
  }
  if (config.limits.storage_url != "memory://") {
    // Redis down at start is not fatal (see above), but it must not be silent: one PING, bound
    // by the limiter's command deadline.
    net::io_context probe;
    Status pinged = Ok();
    net::co_spawn(
        probe, [&limiter, &pinged]() -> net::awaitable<void> { pinged = co_await limiter.Ping(); },
        net::detached);
    probe.run();
    if (!pinged) {
      observe::Warn(config.limits.fail_open
                        ? "the rate-limit storage does not answer: requests are let through "
                          "unlimited until it does (STAPLE_RATELIMIT_FAILURE=open)"
                        : "the rate-limit storage does not answer: limited routes answer 503 "
                          "until it does (STAPLE_RATELIMIT_FAILURE=closed)",
                    {{"error", pinged.error().message}});
    }
  }

  // 4. Wait for SIGINT/SIGTERM, then stop gracefully: in-flight requests finish, their turns are
  // committed, the writer is flushed.
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  observe::Info("shutting down", {{"signal", signal_number == SIGINT ? "SIGINT" : "SIGTERM"}});
  server.Shutdown(config.server.shutdown_grace);
  upstream_client.Shutdown();
  if (key_registry) key_registry->Stop();  // flushes the usage counted so far
  if (retention) retention->Stop();        // after the step in progress
  store->Close();
  observe::Info("stopped");
  observe::FlushLogs();
  return 0;
}

// `staple keys …`: client-key management straight on the configured database (blocking calls are
// fine here: no server runs in this process). Only STAPLE_DATABASE_URL (flag, environment or .env)
// matters, so an unrelated bad variable does not stop key management.
struct KeysCommand {
  CLI::App* command = nullptr;
  CLI::App* create = nullptr;
  CLI::App* list = nullptr;
  CLI::App* show = nullptr;
  CLI::App* update = nullptr;
  CLI::App* revoke = nullptr;
  std::string env_file;  // "" : ./.env if there is one
  std::string database_url;
  CLI::Option* database_url_option = nullptr;
  std::string id;
  // The fields of create and update; an option's count() says whether it was given.
  struct Fields {
    std::string name;
    int expires_in_days = 0;
    std::string expires_at;
    std::string models;
    std::string request_limits;
    std::string token_limits;
    std::string metadata;
    bool clear_expiry = false;
    CLI::Option* name_option = nullptr;
    CLI::Option* expires_in_days_option = nullptr;
    CLI::Option* expires_at_option = nullptr;
    CLI::Option* models_option = nullptr;
    CLI::Option* request_limits_option = nullptr;
    CLI::Option* token_limits_option = nullptr;
    CLI::Option* metadata_option = nullptr;
  };
  Fields create_fields;
  Fields update_fields;
};

constexpr int kKeysUsageDays = 30;

void AddKeyFieldOptions(CLI::App* command, KeysCommand::Fields& fields, bool is_update) {
  fields.name_option =
      command->add_option("--name", fields.name, "a name for people (at most 200 bytes)");
  if (!is_update) fields.name_option->required();
  fields.expires_in_days_option =
      command->add_option("--expires-in-days", fields.expires_in_days, "expires D days from now")
          ->check(CLI::PositiveNumber);
  fields.expires_at_option =
      command->add_option("--expires-at", fields.expires_at,
                          "expires at this time (ISO 8601, e.g. 2026-12-31T23:59:59Z)");
  fields.expires_at_option->excludes(fields.expires_in_days_option);
  fields.models_option = command->add_option(
      "--models", fields.models, "comma-separated model names the key may use (empty: all)");
  fields.request_limits_option = command->add_option("--request-limits", fields.request_limits,
                                                     "requests per key, e.g. \"60 per minute\"");
  fields.token_limits_option = command->add_option("--token-limits", fields.token_limits,
                                                   "tokens per key, e.g. \"100000 per day\"");
  fields.metadata_option =
      command->add_option("--metadata", fields.metadata, "a JSON object kept with the key");
  if (is_update) {
    auto* clear = command->add_flag("--clear-expiry", fields.clear_expiry, "never expires");
    clear->excludes(fields.expires_in_days_option);
    clear->excludes(fields.expires_at_option);
  }
}

std::unique_ptr<KeysCommand> AddKeysCommand(CLI::App& cli) {
  auto keys = std::make_unique<KeysCommand>();
  keys->command = cli.add_subcommand("keys", "Manage client keys (sk-staple-…) in the database");
  keys->command->require_subcommand(1);
  keys->command->add_option("--env-file", keys->env_file, kEnvFileHelp);
  keys->database_url_option =
      keys->command->add_option("--database-url", keys->database_url,
                                "the database [env STAPLE_DATABASE_URL, default "
                                "'sqlite:///instance/chat_history.db']");
  keys->create = keys->command->add_subcommand("create", "Create a key; prints its secret once");
  AddKeyFieldOptions(keys->create, keys->create_fields, false);
  keys->list = keys->command->add_subcommand("list", "List the keys (never their secrets)");
  keys->show = keys->command->add_subcommand("show", "Show one key and its usage per day");
  keys->show->add_option("id", keys->id, "the key's id (key_…)")->required();
  keys->update = keys->command->add_subcommand("update", "Change a key's fields");
  keys->update->add_option("id", keys->id, "the key's id (key_…)")->required();
  AddKeyFieldOptions(keys->update, keys->update_fields, true);
  keys->revoke = keys->command->add_subcommand("revoke", "Revoke a key for good");
  keys->revoke->add_option("id", keys->id, "the key's id (key_…)")->required();
  return keys;
}

std::int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Applies the options given to `record`. kInvalidArgument naming the flag.
Status ApplyKeyFields(const KeysCommand::Fields& fields, keys::KeyRecord& record) {
  if (fields.name_option->count() > 0) record.name = fields.name;
  if (fields.expires_in_days_option->count() > 0) {
    record.expires_at = UnixNow() + static_cast<std::int64_t>(fields.expires_in_days) * 86400;
  }
  if (fields.expires_at_option->count() > 0) {
    auto at = keys::ParseUtcTime(fields.expires_at);
    if (!at) return MakeError(ErrorKind::kInvalidArgument, "--expires-at: " + at.error().message);
    record.expires_at = *at;
  }
  if (fields.clear_expiry) record.expires_at.reset();
  if (fields.models_option->count() > 0) {
    record.allowed_models.clear();
    std::stringstream list(fields.models);
    std::string model;
    while (std::getline(list, model, ',')) {
      const auto first = model.find_first_not_of(" \t");
      if (first == std::string::npos) continue;
      const auto last = model.find_last_not_of(" \t");
      record.allowed_models.push_back(model.substr(first, last - first + 1));
    }
  }
  if (fields.request_limits_option->count() > 0) record.request_limits = fields.request_limits;
  if (fields.token_limits_option->count() > 0) record.token_limits = fields.token_limits;
  if (fields.metadata_option->count() > 0) record.metadata = fields.metadata;
  return keys::Validate(record);
}

// Text as one line: control characters become spaces.
std::string OneLine(std::string text) {
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return text;
}

std::string ExpiryText(const keys::KeyRecord& record) {
  return record.expires_at ? keys::FormatUtc(*record.expires_at) : "never";
}

std::string ModelsText(const keys::KeyRecord& record) {
  if (record.allowed_models.empty()) return "all";
  std::string text;
  for (const auto& model : record.allowed_models) text += (text.empty() ? "" : ",") + model;
  return OneLine(text);
}

std::string LimitsText(const std::string& limits) {
  return limits.empty() ? "none" : OneLine(limits);
}

// Every field of a key but its hash, one per line.
void PrintKey(const keys::KeyRecord& record) {
  std::cout << "id:             " << record.id << '\n'
            << "name:           " << OneLine(record.name) << '\n'
            << "created:        " << keys::FormatUtc(record.created_at) << '\n'
            << "expires:        " << ExpiryText(record) << '\n'
            << "revoked:        " << (record.revoked ? "yes" : "no") << '\n'
            << "models:         " << ModelsText(record) << '\n'
            << "request limits: " << LimitsText(record.request_limits) << '\n'
            << "token limits:   " << LimitsText(record.token_limits) << '\n'
            << "metadata:       " << OneLine(record.metadata) << '\n';
}

// Rows as aligned columns, the first row being the header.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    std::cout << line << '\n';
  }
}

// The exit code for a failed key operation: 2 for input the command refuses, 1 otherwise.
int KeysFailure(const Error& error) {
  std::cerr << "staple keys: " << error.message << '\n';
  return error.kind == ErrorKind::kInvalidArgument ? 2 : 1;
}

// The configuration as `serve` loads it, reduced to the database: flag > environment > .env.
// Only STAPLE_DATABASE_URL is read, so an unrelated bad variable does not stop a command.
Result<config::StoreSettings> LoadDatabaseSettings(const std::string& env_file,
                                                   const CLI::Option& url_option,
                                                   const std::string& url) {
  config::Sources sources;
  constexpr const char* kDatabaseUrl = "STAPLE_DATABASE_URL";
  if (url_option.count() > 0) sources.flags[kDatabaseUrl] = url;
  sources.environment = [](const std::string& name) -> std::optional<std::string> {
    const char* value = name == kDatabaseUrl ? std::getenv(name.c_str()) : nullptr;
    return value == nullptr ? std::nullopt : std::optional<std::string>(value);
  };
  auto dotenv = ReadDotenv(env_file);
  if (!dotenv) return dotenv.error();
  if (auto found = dotenv->find(kDatabaseUrl); found != dotenv->end()) {
    sources.dotenv[kDatabaseUrl] = found->second;
  }
  auto loaded = config::Load(sources);
  if (!loaded) return loaded.error();
  return std::move(loaded->store);
}

int RunKeys(const KeysCommand& keys) {
  auto loaded = LoadDatabaseSettings(keys.env_file, *keys.database_url_option, keys.database_url);
  if (!loaded) {
    std::cerr << "staple keys: " << loaded.error().message << '\n';
    return 2;
  }
  auto opened = keys::OpenKeyStore(loaded->url, loaded->sqlite_path);
  if (!opened) return KeysFailure(opened.error());
  keys::KeyStore& store = **opened;

  if (keys.command->got_subcommand(keys.create)) {
    keys::KeyRecord record;
    if (auto applied = ApplyKeyFields(keys.create_fields, record); !applied) {
      return KeysFailure(applied.error());
    }
    const std::string secret = keys::GenerateSecret();
    record.id = keys::GenerateId();
    record.secret_hash = keys::HashSecret(secret);
    record.created_at = UnixNow();
    if (auto created = store.Create(record); !created) return KeysFailure(created.error());
    PrintKey(record);
    std::cout << "secret (shown only this once; Staple keeps only its hash):\n" << secret << '\n';
    return 0;
  }
  if (keys.command->got_subcommand(keys.list)) {
    auto records = store.List();
    if (!records) return KeysFailure(records.error());
    std::vector<std::vector<std::string>> rows{{"ID", "NAME", "CREATED", "EXPIRES", "REVOKED",
                                                "MODELS", "REQUEST LIMITS", "TOKEN LIMITS"}};
    for (const auto& record : *records) {
      rows.push_back({record.id, OneLine(record.name), keys::FormatUtc(record.created_at),
                      ExpiryText(record), record.revoked ? "yes" : "no", ModelsText(record),
                      LimitsText(record.request_limits), LimitsText(record.token_limits)});
    }
    PrintTable(rows);
    return 0;
  }
  if (keys.command->got_subcommand(keys.show)) {
    auto record = store.Get(keys.id);
    if (!record) return KeysFailure(record.error());
    auto usage = store.Usage(keys.id, kKeysUsageDays);
    if (!usage) return KeysFailure(usage.error());
    PrintKey(*record);
    if (usage->empty()) {
      std::cout << "usage:          none recorded\n";
      return 0;
    }
    std::cout << "usage per UTC day, newest first (at most " << kKeysUsageDays << " days):\n";
    std::vector<std::vector<std::string>> rows{
        {"DAY", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS"}};
    for (const auto& day : *usage) {
      rows.push_back({day.day, std::to_string(day.requests), std::to_string(day.prompt_tokens),
                      std::to_string(day.completion_tokens)});
    }
    PrintTable(rows);
    return 0;
  }
  if (keys.command->got_subcommand(keys.update)) {
    auto record = store.Get(keys.id);
    if (!record) return KeysFailure(record.error());
    if (auto applied = ApplyKeyFields(keys.update_fields, *record); !applied) {
      return KeysFailure(applied.error());
    }
    if (auto updated = store.Update(*record); !updated) return KeysFailure(updated.error());
    PrintKey(*record);
    return 0;
  }
  auto record = store.Get(keys.id);
  if (!record) return KeysFailure(record.error());
  if (auto revoked = store.Revoke(keys.id); !revoked) return KeysFailure(revoked.error());
  std::cout << "revoked " << record->id << " (" << OneLine(record->name) << ")\n";
  return 0;
}

// `staple backup PATH`: a consistent copy of the configured SQLite database, taken while a server
// may be writing to it. Exit codes: 0 copied, 1 the copy failed, 2 usage (the destination
// exists, no database, a PostgreSQL URL).
struct BackupCommand {
  CLI::App* command = nullptr;
  std::string env_file;  // "" : ./.env if there is one
  std::string database_url;
  CLI::Option* database_url_option = nullptr;
  std::string path;
  bool force = false;
};

std::unique_ptr<BackupCommand> AddBackupCommand(CLI::App& cli) {
  auto backup = std::make_unique<BackupCommand>();
  backup->command = cli.add_subcommand(
      "backup",
      "Copy the SQLite database to PATH while Staple may be running (SQLite's online backup: "
      "one consistent snapshot, written to a temporary file next to PATH, then renamed). "
      "For PostgreSQL use pg_dump.");
  backup->command->add_option("path", backup->path, "the backup file to write")->required();
  backup->command->add_flag("--force", backup->force, "replace PATH if it exists");
  backup->command->add_option("--env-file", backup->env_file, kEnvFileHelp);
  backup->database_url_option =
      backup->command->add_option("--database-url", backup->database_url,
                                  "the database [env STAPLE_DATABASE_URL, default "
                                  "'sqlite:///instance/chat_history.db']");
  return backup;
}

int RunBackup(const BackupCommand& backup) {
  auto loaded =
      LoadDatabaseSettings(backup.env_file, *backup.database_url_option, backup.database_url);
  if (!loaded) {
    std::cerr << "staple backup: " << loaded.error().message << '\n';
    return 2;
  }
  if (IsPostgresUrl(loaded->url)) {
    std::cerr << "staple backup: the database is PostgreSQL ("
              << config::MaskUrlPassword(loaded->url)
              << "); staple backup copies SQLite databases only. Use PostgreSQL's own tools, "
                 "e.g.: pg_dump --format=custom --file="
              << backup.path << " \"$STAPLE_DATABASE_URL\"\n";
    return 2;
  }
  store::BackupOptions options;
  options.source = loaded->sqlite_path;
  options.destination = backup.path;
  options.overwrite = backup.force;
  auto copied = store::BackupDatabase(options);
  if (!copied) {
    std::cerr << "staple backup: " << copied.error().message << '\n';
    return copied.error().kind == ErrorKind::kInvalidArgument ? 2 : 1;
  }
  std::cout << "backed up " << loaded->sqlite_path << " to " << backup.path << " (" << copied->pages
            << " pages, " << copied->bytes << " bytes)\n";
  return 0;
}

}  // namespace

// A start-up error, in the log format the configuration asks for (flag, environment or .env,
// read as far as they could be) so that a JSON log pipeline sees it too; otherwise one plain
// line. Returns `exit_code`.
int StartupError(const config::Sources& sources, const std::string& message, int exit_code) {
  constexpr const char* kFormat = "STAPLE_LOG_FORMAT";
  std::optional<std::string> format;
  if (const auto flag = sources.flags.find(kFormat); flag != sources.flags.end()) {
    format = flag->second;
  } else if (auto from_environment =
                 sources.environment ? sources.environment(kFormat) : std::nullopt) {
    format = std::move(from_environment);
  } else if (const auto dotenv = sources.dotenv.find(kFormat); dotenv != sources.dotenv.end()) {
    format = dotenv->second;
  }
  if (format && format->find("json") != std::string::npos) {
    observe::InitLogging(observe::LogFormat::kJson);
    observe::Error("start-up failed", {{"error", message}});
    observe::FlushLogs();
  } else {
    std::cerr << "staple: " << message << '\n';
  }
  return exit_code;
}

int Main(int argc, char** argv) {
  CLI::App cli{"Staple: a conversational gateway for OpenAI-compatible chat APIs", "staple"};
  cli.set_version_flag("--version", std::string("staple ") + observe::BuildVersion());
  cli.require_subcommand(1);
  auto* serve = cli.add_subcommand("serve", "Run the gateway (flags override the environment)");
  std::string env_file;  // "" : ./.env if there is one
  serve->add_option("--env-file", env_file, kEnvFileHelp);
  std::map<std::string, std::string> flag_values;
  std::vector<std::pair<std::string, CLI::Option*>> flag_options;
  for (const auto& variable : config::Variables()) {
    auto* option = serve->add_option(
        variable.flag, flag_values[variable.name],
        fmt::format("{} [env {}, default '{}']", variable.help, variable.name, variable.fallback));
    // Numeric settings show as NUMBER in --help (CLI11 says TEXT for a string target).
    const std::string fallback = variable.fallback;
    if (!fallback.empty() && fallback.find_first_not_of("0123456789.") == std::string::npos &&
        std::count(fallback.begin(), fallback.end(), '.') <= 1) {
      option->type_name("NUMBER");
    }
    // A boolean switch may be given alone ("--demo" = "--demo true").
    if (std::string_view(variable.flag) == "--demo") option->expected(0, 1);
    flag_options.emplace_back(variable.name, option);
  }
  auto keys_command = AddKeysCommand(cli);
  auto backup_command = AddBackupCommand(cli);
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e) == 0 ? 0 : 2;
  }
  if (keys_command->command->parsed()) {
    try {
      return RunKeys(*keys_command);
    } catch (const std::exception& e) {
      std::cerr << "staple keys: " << e.what() << '\n';
      return 1;
    }
  }
  if (backup_command->command->parsed()) {
    try {
      return RunBackup(*backup_command);
    } catch (const std::exception& e) {
      std::cerr << "staple backup: " << e.what() << '\n';
      return 1;
    }
  }

  config::Sources sources;
  for (const auto& [name, option] : flag_options) {
    if (option->count() > 0) {
      sources.flags[name] = flag_values[name].empty() && option->get_expected_min() == 0
                                ? std::string("true")
                                : flag_values[name];
    }
  }
  sources.environment = [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    return value == nullptr ? std::nullopt : std::optional<std::string>(value);
  };
  auto dotenv = ReadDotenv(env_file);
  if (!dotenv) return StartupError(sources, dotenv.error().message, 2);
  sources.dotenv = std::move(dotenv).value();
  // Before the configuration is loaded: the default connection cap derives from the limit.
  http::RaiseOpenFileLimit();
  auto loaded = config::Load(sources);
  if (!loaded) {
    // A value given as a flag is named by its flag ("invalid --port='x': ..."), not its variable.
    std::string message = loaded.error().message;
    for (const auto& variable : config::Variables()) {
      const std::string named = "invalid " + std::string(variable.name) + "=";
      if (sources.flags.count(variable.name) > 0 && message.rfind(named, 0) == 0) {
        message = "invalid " + std::string(variable.flag) + "=" + message.substr(named.size());
        break;
      }
    }
    return StartupError(sources, message, 2);
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
    return StartupError(sources, std::string("start-up failed: ") + e.what(), 1);
  }
}

}  // namespace staple::app
