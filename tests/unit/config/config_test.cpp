#include "config/config.h"

#include <gtest/gtest.h>

#include "api/token_limits.h"
#include "chat/context_window.h"
#include "chat/conversation_service.h"
#include "http/server.h"
#include "upstream/client.h"

namespace staple::config {
namespace {

Sources EnvOnly(std::map<std::string, std::string> env) {
  Sources sources;
  sources.environment = [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  return sources;
}

TEST(ConfigTest, DefaultsMatchTheSeed) {
  auto config = Load(EnvOnly({}));
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->server.host, "127.0.0.1");
  EXPECT_EQ(config->server.port, 5000);
  EXPECT_EQ(config->store.sqlite_path, "instance/chat_history.db");
  ASSERT_EQ(config->limits.default_limits.size(), 2u);
  EXPECT_EQ(config->limits.default_limits[0].ToString(), "200 per 1 day");
  EXPECT_EQ(config->limits.default_limits[1].ToString(), "50 per 1 hour");
  ASSERT_EQ(config->limits.completion_limits.size(), 1u);
  EXPECT_EQ(config->limits.completion_limits[0].ToString(), "10 per 1 minute");
  EXPECT_EQ(config->chat.model, "gpt-4o-mini");
  EXPECT_EQ(config->chat.history_max_messages, 100u);
  EXPECT_EQ(config->chat.history_max_chars, 200000u);
  EXPECT_EQ(config->upstream.base_url, "https://api.openai.com/v1");
  EXPECT_FALSE(config->limits.fail_open);
}

TEST(ConfigTest, FlagsBeatEnvironmentBeatDotenv) {
  auto sources = EnvOnly({{"STAPLE_PORT", "6000"}, {"OPENAI_MODEL", "from-env"}});
  sources.dotenv = {{"STAPLE_PORT", "7000"},
                    {"OPENAI_MODEL", "from-dotenv"},
                    {"STAPLE_SYSTEM_PROMPT", "be brief"}};
  sources.flags = {{"STAPLE_PORT", "8000"}};
  auto config = Load(sources);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->server.port, 8000);
  EXPECT_EQ(config->chat.model, "from-env");
  EXPECT_EQ(config->chat.system_prompt, "be brief");
}

TEST(ConfigTest, EmptyLimitMeansNoLimit) {
  auto config = Load(EnvOnly({{"STAPLE_COMPLETION_LIMIT", ""}, {"STAPLE_DEFAULT_LIMITS", " "}}));
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_TRUE(config->limits.completion_limits.empty());
  EXPECT_TRUE(config->limits.default_limits.empty());
}

TEST(ConfigTest, TokenLimitsUseTheLimitNotation) {
  auto none = Load(EnvOnly({}));
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_TRUE(none->limits.token_limits.empty());
  EXPECT_EQ(none->limits.token_completion_reserve, 1024u);

  auto config = Load(EnvOnly({{"STAPLE_TOKEN_LIMITS", "100000 per day; 20000/minute"},
                              {"STAPLE_TOKEN_COMPLETION_RESERVE", "256"}}));
  ASSERT_TRUE(config.ok()) << config.error().message;
  ASSERT_EQ(config->limits.token_limits.size(), 2u);
  EXPECT_EQ(config->limits.token_limits[0].ToString(), "100000 per 1 day");
  EXPECT_EQ(config->limits.token_limits[1].ToString(), "20000 per 1 minute");
  EXPECT_EQ(config->limits.token_completion_reserve, 256u);
}

TEST(ConfigTest, InvalidValuesNameTheVariable) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"STAPLE_PORT", "abc"},
      {"STAPLE_PORT", "70000"},
      {"STAPLE_HOST", "not an address"},
      {"STAPLE_COMPLETION_LIMIT", "10 per fortnight"},
      {"STAPLE_DEFAULT_LIMITS", "10/minute;"},
      {"STAPLE_RATELIMIT_STRATEGY", "leaky-bucket"},
      {"STAPLE_RATELIMIT_FAILURE", "maybe"},
      {"STAPLE_TRUSTED_PROXIES", "10.0.0.0/8,not-an-ip"},
      {"STAPLE_HISTORY_MAX_MESSAGES", "-1"},
      {"STAPLE_UPSTREAM_TIMEOUT", "soon"},
      {"STAPLE_LOG_FORMAT", "xml"},
      {"OPENAI_BASE_URL", "ftp://example.com"},
      {"STAPLE_DATABASE_URL", "mysql://localhost/db"},
      {"STAPLE_TOKEN_LIMITS", "lots per day"},
      {"STAPLE_TOKEN_COMPLETION_RESERVE", "-5"},
      {"STAPLE_IPV6_PREFIX", "0"},
      {"STAPLE_IPV6_PREFIX", "129"},
      {"STAPLE_LIMITER_MAX_CLIENTS", "0"},
      {"STAPLE_CACHE_MB", "0"},
      {"STAPLE_UPSTREAM_CLIENT", "libcurl"},
  };
  for (const auto& [name, value] : cases) {
    auto config = Load(EnvOnly({{name, value}}));
    ASSERT_FALSE(config.ok()) << name << "=" << value << " was accepted";
    EXPECT_NE(config.error().message.find(name), std::string::npos) << config.error().message;
    EXPECT_EQ(config.error().message.find('\n'), std::string::npos) << "one line only";
  }
}

// Found by tests/fuzz/config_fuzz.cpp: "nan" parses as a double and passed the range check, then
// converting it to milliseconds was undefined behaviour.
TEST(ConfigTest, SecondsRejectNotANumberAndInfinity) {
  for (const std::string value : {"nan", "NaN", "-nan", "inf", "-inf", "1e400"}) {
    for (const std::string name :
         {"STAPLE_UPSTREAM_TIMEOUT", "STAPLE_SHUTDOWN_TIMEOUT", "STAPLE_UPSTREAM_IDLE_TIMEOUT"}) {
      auto config = Load(EnvOnly({{name, value}}));
      ASSERT_FALSE(config.ok()) << name << "=" << value << " was accepted";
      EXPECT_NE(config.error().message.find(name), std::string::npos) << config.error().message;
    }
  }
}

TEST(ConfigTest, SecretsAreMaskedInTheEffectiveConfiguration) {
  auto config = Load(EnvOnly({{"OPENAI_API_KEY", "sk-test-SECRET-1234567890"}}));
  ASSERT_TRUE(config.ok());
  bool found = false;
  for (const auto& [name, value] : config->effective) {
    EXPECT_EQ(value.find("SECRET"), std::string::npos) << name;
    if (name == "OPENAI_API_KEY") {
      found = true;
      EXPECT_EQ(value, "sk-...7890");
    }
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(config->upstream.api_key, "sk-test-SECRET-1234567890");
}

TEST(ConfigTest, UrlPasswordsAreMasked) {
  EXPECT_EQ(MaskUrlPassword("postgresql://staple:hunter2@db:5432/chat"),
            "postgresql://staple:***@db:5432/chat");
  EXPECT_EQ(MaskUrlPassword("redis://cache:6379/0"), "redis://cache:6379/0");
  EXPECT_EQ(MaskUrlPassword("redis://:s3cret@cache:6379/0"), "redis://:***@cache:6379/0");
  EXPECT_EQ(MaskUrlPassword("redis://app:p@ss@cache/1"), "redis://app:***@cache/1");

  // An invalid URL is quoted in the error without its password.
  auto config = Load(EnvOnly({{"STAPLE_RATELIMIT_STORAGE", "redis://:hunter2@cache:notaport"}}));
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.error().message.find("STAPLE_RATELIMIT_STORAGE"), std::string::npos);
  EXPECT_EQ(config.error().message.find("hunter2"), std::string::npos) << config.error().message;
}

TEST(ConfigTest, TrailingSlashOfBaseUrlIsDropped) {
  auto config = Load(EnvOnly({{"OPENAI_BASE_URL", "http://127.0.0.1:8080/v1/"}}));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->upstream.base_url, "http://127.0.0.1:8080/v1");
}

TEST(ConfigTest, StreamingTimeoutsDefaultTo60SecondsAndAreConfigurable) {
  auto defaults = Load(EnvOnly({}));
  ASSERT_TRUE(defaults.ok()) << defaults.error().message;
  EXPECT_EQ(defaults->upstream.first_byte_timeout, std::chrono::milliseconds(60'000));
  EXPECT_EQ(defaults->upstream.idle_timeout, std::chrono::milliseconds(60'000));
  auto set = Load(EnvOnly(
      {{"STAPLE_UPSTREAM_FIRST_BYTE_TIMEOUT", "2.5"}, {"STAPLE_UPSTREAM_IDLE_TIMEOUT", "7"}}));
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ(set->upstream.first_byte_timeout, std::chrono::milliseconds(2'500));
  EXPECT_EQ(set->upstream.idle_timeout, std::chrono::milliseconds(7'000));
  auto invalid = Load(EnvOnly({{"STAPLE_UPSTREAM_IDLE_TIMEOUT", "soon"}}));
  ASSERT_FALSE(invalid.ok());
  EXPECT_NE(invalid.error().message.find("STAPLE_UPSTREAM_IDLE_TIMEOUT"), std::string::npos);
}

TEST(ConfigTest, UpstreamClientIsAutoUnlessNamed) {
  auto defaults = Load(EnvOnly({}));
  ASSERT_TRUE(defaults.ok()) << defaults.error().message;
  EXPECT_EQ(defaults->upstream.client, upstream::ClientKind::kAuto);
  for (const auto& [text, kind] : {std::pair{"asio", upstream::ClientKind::kAsio},
                                   std::pair{"curl", upstream::ClientKind::kCurl},
                                   std::pair{" auto ", upstream::ClientKind::kAuto}}) {
    auto set = Load(EnvOnly({{"STAPLE_UPSTREAM_CLIENT", text}}));
    ASSERT_TRUE(set.ok()) << set.error().message;
    EXPECT_EQ(set->upstream.client, kind) << text;
  }
}

const std::string& Fallback(const char* name) {
  for (const auto& variable : Variables()) {
    if (std::string(variable.name) == name) return variable.fallback;
  }
  ADD_FAILURE() << name << " is not a variable";
  static const std::string kNone;
  return kNone;
}

// The defaults a subsystem's settings struct carries are the configuration's defaults, both in
// what Load() resolves and in the text `staple serve --help` shows, so each is written once.
TEST(ConfigTest, DefaultsComeFromTheSubsystemsSettings) {
  const upstream::Settings upstream;
  const http::ServerOptions server;
  const chat::ServiceSettings chat;
  const chat::WindowLimits window;
  const api::TokenLimitSettings tokens;
  auto config = Load(EnvOnly({}));
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->upstream.base_url, upstream.base_url);
  EXPECT_EQ(config->upstream.total_timeout, upstream.total_timeout);
  EXPECT_EQ(config->upstream.connect_timeout, upstream.connect_timeout);
  EXPECT_EQ(config->upstream.first_byte_timeout, upstream.first_byte_timeout);
  EXPECT_EQ(config->upstream.idle_timeout, upstream.idle_timeout);
  EXPECT_EQ(config->upstream.max_retries, upstream.max_retries);
  EXPECT_EQ(config->server.host, server.host);
  EXPECT_EQ(config->server.port, server.port);
  EXPECT_EQ(config->server.max_body_bytes, server.max_body_bytes);
  EXPECT_EQ(config->server.access_log, server.access_log);
  EXPECT_EQ(config->chat.model, chat.model);
  EXPECT_EQ(config->chat.history_max_messages, window.max_messages);
  EXPECT_EQ(config->chat.history_max_chars, window.max_chars);
  EXPECT_EQ(config->limits.token_completion_reserve, tokens.completion_reserve);
}

// The help text's defaults, exactly as `staple serve --help` has always shown them.
TEST(ConfigTest, DefaultsReadAsTheHelpShowsThem) {
  const std::vector<std::pair<const char*, const char*>> expected = {
      {"OPENAI_API_KEY", ""},
      {"OPENAI_BASE_URL", "https://api.openai.com/v1"},
      {"OPENAI_MODEL", "gpt-4o-mini"},
      {"STAPLE_HOST", "127.0.0.1"},
      {"STAPLE_PORT", "5000"},
      {"STAPLE_THREADS", "0"},
      {"STAPLE_DATABASE_URL", "sqlite:///instance/chat_history.db"},
      {"STAPLE_SQLITE_SYNCHRONOUS", "full"},
      {"STAPLE_CACHE_MB", "64"},
      {"STAPLE_RETENTION", ""},
      {"STAPLE_RATELIMIT_STORAGE", "memory://"},
      {"STAPLE_DEFAULT_LIMITS", "200 per day;50 per hour"},
      {"STAPLE_COMPLETION_LIMIT", "10 per minute"},
      {"STAPLE_V1_LIMIT", ""},
      {"STAPLE_RESPONSES_LIMIT", ""},
      {"STAPLE_TOKEN_LIMITS", ""},
      {"STAPLE_TOKEN_COMPLETION_RESERVE", "1024"},
      {"STAPLE_RATELIMIT_STRATEGY", "fixed-window"},
      {"STAPLE_RATELIMIT_FAILURE", "closed"},
      {"STAPLE_TRUSTED_PROXIES", ""},
      {"STAPLE_IPV6_PREFIX", "64"},
      {"STAPLE_LIMITER_MAX_CLIENTS", "100000"},
      {"STAPLE_AUTH", ""},
      {"STAPLE_ADMIN_KEY", ""},
      {"STAPLE_AUTH_FAILURE_LIMIT", "10 per minute"},
      {"STAPLE_ALLOWED_HOSTS", ""},
      {"STAPLE_SYSTEM_PROMPT", ""},
      {"STAPLE_HISTORY_MAX_MESSAGES", "100"},
      {"STAPLE_HISTORY_MAX_CHARS", "200000"},
      {"STAPLE_UPSTREAM_TIMEOUT", "120"},
      {"STAPLE_UPSTREAM_STREAM_TIMEOUT", "600"},
      {"STAPLE_UPSTREAM_CONNECT_TIMEOUT", "10"},
      {"STAPLE_UPSTREAM_FIRST_BYTE_TIMEOUT", "60"},
      {"STAPLE_UPSTREAM_IDLE_TIMEOUT", "60"},
      {"STAPLE_DEMO", "false"},
      {"STAPLE_UPSTREAMS", ""},
      {"STAPLE_UPSTREAM_CLIENT", "auto"},
      {"STAPLE_UPSTREAM_RETRIES", "2"},
      {"STAPLE_MAX_BODY_BYTES", "1048576"},
      {"STAPLE_MAX_CONNECTIONS", "0"},
      {"STAPLE_MAX_CONNECTIONS_PER_PEER", "0"},
      {"STAPLE_IDLE_TIMEOUT", "60"},
      {"STAPLE_HEADER_TIMEOUT", "10"},
      {"STAPLE_SHUTDOWN_TIMEOUT", "30"},
      {"STAPLE_LOG_FORMAT", "text"},
      {"STAPLE_ACCESS_LOG", "true"},
  };
  ASSERT_EQ(Variables().size(), expected.size());
  for (const auto& [name, fallback] : expected) EXPECT_EQ(Fallback(name), fallback) << name;
}

// The storage URL is validated by the Redis URL parser alone (no Redis limiter is linked here).
TEST(ConfigTest, RatelimitStorageIsMemoryOrAValidRedisUrl) {
  for (const char* good : {"memory://", "redis://cache", "redis://:pw@10.0.0.5:6380/2"}) {
    auto config = Load(EnvOnly({{"STAPLE_RATELIMIT_STORAGE", good}}));
    ASSERT_TRUE(config.ok()) << good << ": " << config.error().message;
    EXPECT_EQ(config->limits.storage_url, good);
  }
  for (const char* bad : {"memory", "rediss://cache", "redis://cache:0", "http://cache"}) {
    auto config = Load(EnvOnly({{"STAPLE_RATELIMIT_STORAGE", bad}}));
    ASSERT_FALSE(config.ok()) << bad << " was accepted";
    EXPECT_NE(config.error().message.find("STAPLE_RATELIMIT_STORAGE"), std::string::npos);
  }
}

TEST(DotenvTest, ParsesTheUsualForms) {
  auto parsed = ParseDotenv(
      "# comment\n"
      "OPENAI_API_KEY=sk-abc\n"
      "export STAPLE_PORT = 6000\n"
      "STAPLE_SYSTEM_PROMPT=\"Line one\\nLine \\\"two\\\"\"\n"
      "STAPLE_DEFAULT_LIMITS='5 per minute # not a comment'\n"
      "STAPLE_COMPLETION_LIMIT=\n"
      "OPENAI_MODEL=gpt-4o # trailing comment\n");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  auto& env = *parsed;
  EXPECT_EQ(env["OPENAI_API_KEY"], "sk-abc");
  EXPECT_EQ(env["STAPLE_PORT"], "6000");
  EXPECT_EQ(env["STAPLE_SYSTEM_PROMPT"], "Line one\nLine \"two\"");
  EXPECT_EQ(env["STAPLE_DEFAULT_LIMITS"], "5 per minute # not a comment");
  EXPECT_EQ(env["STAPLE_COMPLETION_LIMIT"], "");
  EXPECT_EQ(env["OPENAI_MODEL"], "gpt-4o");
}

TEST(DotenvTest, ErrorsNameTheLine) {
  auto parsed = ParseDotenv("A=1\nthis line is wrong\n");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message.find("line 2"), std::string::npos);
  auto unterminated = ParseDotenv("A=\"open\n");
  ASSERT_FALSE(unterminated.ok());
}

TEST(ConfigTest, ClientLimitAndCacheSettings) {
  auto defaults = Load(EnvOnly({}));
  ASSERT_TRUE(defaults.ok()) << defaults.error().message;
  EXPECT_EQ(defaults->limits.ipv6_prefix, 64);
  EXPECT_EQ(defaults->limits.max_clients, 100'000u);
  EXPECT_EQ(defaults->store.cache_bytes, 64u * 1024 * 1024);
  auto set = Load(EnvOnly({{"STAPLE_IPV6_PREFIX", "128"},
                           {"STAPLE_LIMITER_MAX_CLIENTS", "500"},
                           {"STAPLE_CACHE_MB", "16"}}));
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ(set->limits.ipv6_prefix, 128);
  EXPECT_EQ(set->limits.max_clients, 500u);
  EXPECT_EQ(set->store.cache_bytes, 16u * 1024 * 1024);
}

}  // namespace
}  // namespace staple::config
