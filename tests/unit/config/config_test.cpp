#include "config/config.h"

#include <gtest/gtest.h>

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
  };
  for (const auto& [name, value] : cases) {
    auto config = Load(EnvOnly({{name, value}}));
    ASSERT_FALSE(config.ok()) << name << "=" << value << " was accepted";
    EXPECT_NE(config.error().message.find(name), std::string::npos) << config.error().message;
    EXPECT_EQ(config.error().message.find('\n'), std::string::npos) << "one line only";
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

}  // namespace
}  // namespace staple::config
