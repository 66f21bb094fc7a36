#include "config/upstreams_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace staple::config {
namespace {

using namespace std::chrono_literals;

constexpr const char* kFile = "upstreams.toml";
// The value of every variable in the test environment: it must never show up in an error.
constexpr const char* kSecret = "sk-test-SECRET-value-0123456789";

Environment EnvOf(std::map<std::string, std::string> env) {
  return [env = std::move(env)](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
}

// Global settings with values no file field has, so that a copied default is recognisable.
upstream::Settings Defaults() {
  upstream::Settings settings;
  settings.base_url = "https://default.example/v9";
  settings.api_key = "global-key";
  settings.connect_timeout = 1'111ms;
  settings.first_byte_timeout = 2'222ms;
  settings.idle_timeout = 3'333ms;
  settings.total_timeout = 4'444ms;
  settings.stream_timeout = 5'555ms;
  settings.max_retries = 7;
  settings.backoff_base = 66ms;
  settings.backoff_max = 777ms;
  settings.max_response_bytes = 12'345;
  settings.stream_buffer_bytes = 6'789;
  return settings;
}

Result<upstream::RouterSettings> Parse(std::string_view text,
                                       std::map<std::string, std::string> env = {}) {
  return ParseUpstreams(text, kFile, Defaults(), EnvOf(std::move(env)));
}

// A valid entry with `extra` lines added to it, as the only upstream of a file.
std::string OneEntry(std::string_view extra) {
  return std::string(
             "[[upstream]]\nname = \"a\"\nbase_url = \"http://localhost:8000/v1\"\n"
             "models = [\"m\"]\n") +
         std::string(extra) + "\n";
}

TEST(UpstreamsFileTest, ParsesEveryField) {
  const std::string text = R"(
# two upstreams and a cooldown
[cooldown]
failures = 5
window_ms = 10000
period_ms = 20000

[[upstream]]
name = "openai"
base_url = "https://api.openai.com/v1/"
api_key_env = "OPENAI_API_KEY"
models = ["gpt-4o*", "gpt-4.1-mini"]
weight = 3
priority = -2
rename = { "zeta" = "z-model", "llama3" = "meta-llama/Llama-3-8B-Instruct" }
max_concurrent = 16
hedge_after_ms = 300
connect_timeout_ms = 100
first_byte_timeout_ms = 200
idle_timeout_ms = 300
total_timeout_ms = 400
stream_timeout_ms = 500
max_retries = 0

[[upstream]]
name = "local.llama_2-b"
base_url = "http://127.0.0.1:8080"
models = ["llama?"]
)";
  auto parsed = Parse(text, {{"OPENAI_API_KEY", kSecret}});
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;

  EXPECT_EQ(parsed->cooldown.failures, 5);
  EXPECT_EQ(parsed->cooldown.window, 10'000ms);
  EXPECT_EQ(parsed->cooldown.period, 20'000ms);

  ASSERT_EQ(parsed->upstreams.size(), 2u);
  const auto& openai = parsed->upstreams[0];
  EXPECT_EQ(openai.name, "openai");
  EXPECT_EQ(openai.settings.base_url, "https://api.openai.com/v1");
  EXPECT_EQ(openai.settings.api_key, kSecret);
  EXPECT_EQ(openai.models, (std::vector<std::string>{"gpt-4o*", "gpt-4.1-mini"}));
  EXPECT_EQ(openai.weight, 3u);
  EXPECT_EQ(openai.priority, -2);
  // File order, not toml++'s sorted order.
  const std::vector<std::pair<std::string, std::string>> rename = {
      {"zeta", "z-model"}, {"llama3", "meta-llama/Llama-3-8B-Instruct"}};
  EXPECT_EQ(openai.rename, rename);
  EXPECT_EQ(openai.max_concurrent, 16u);
  EXPECT_EQ(openai.hedge_after, std::chrono::milliseconds(300));
  EXPECT_EQ(openai.settings.connect_timeout, 100ms);
  EXPECT_EQ(openai.settings.first_byte_timeout, 200ms);
  EXPECT_EQ(openai.settings.idle_timeout, 300ms);
  EXPECT_EQ(openai.settings.total_timeout, 400ms);
  EXPECT_EQ(openai.settings.stream_timeout, 500ms);
  EXPECT_EQ(openai.settings.max_retries, 0);
  // Fields the file cannot set keep the global values.
  EXPECT_EQ(openai.settings.backoff_base, 66ms);
  EXPECT_EQ(openai.settings.backoff_max, 777ms);
  EXPECT_EQ(openai.settings.max_response_bytes, 12'345u);
  EXPECT_EQ(openai.settings.stream_buffer_bytes, 6'789u);

  const auto& local = parsed->upstreams[1];
  EXPECT_EQ(local.name, "local.llama_2-b");
  EXPECT_EQ(local.settings.base_url, "http://127.0.0.1:8080");
  EXPECT_EQ(local.settings.api_key, "");
  EXPECT_EQ(local.models, (std::vector<std::string>{"llama?"}));
}

TEST(UpstreamsFileTest, MinimalEntryGetsTheDefaults) {
  auto parsed = Parse(OneEntry(""));
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  const upstream::CooldownSettings cooldown;
  EXPECT_EQ(parsed->cooldown.failures, cooldown.failures);
  EXPECT_EQ(parsed->cooldown.window, cooldown.window);
  EXPECT_EQ(parsed->cooldown.period, cooldown.period);

  ASSERT_EQ(parsed->upstreams.size(), 1u);
  const auto& entry = parsed->upstreams[0];
  const auto defaults = Defaults();
  EXPECT_EQ(entry.name, "a");
  EXPECT_EQ(entry.settings.base_url, "http://localhost:8000/v1");
  EXPECT_EQ(entry.settings.api_key, "") << "without api_key_env the upstream is keyless";
  EXPECT_EQ(entry.weight, 1u);
  EXPECT_EQ(entry.priority, 0);
  EXPECT_EQ(entry.max_concurrent, 0u);
  EXPECT_EQ(entry.hedge_after, std::chrono::milliseconds(0));
  EXPECT_TRUE(entry.rename.empty());
  EXPECT_EQ(entry.settings.connect_timeout, defaults.connect_timeout);
  EXPECT_EQ(entry.settings.first_byte_timeout, defaults.first_byte_timeout);
  EXPECT_EQ(entry.settings.idle_timeout, defaults.idle_timeout);
  EXPECT_EQ(entry.settings.total_timeout, defaults.total_timeout);
  EXPECT_EQ(entry.settings.stream_timeout, defaults.stream_timeout);
  EXPECT_EQ(entry.settings.max_retries, defaults.max_retries);
  EXPECT_EQ(entry.settings.max_response_bytes, defaults.max_response_bytes);
}

TEST(UpstreamsFileTest, TrailingSlashesAreRemoved) {
  for (const auto& [url, expected] : std::vector<std::pair<std::string, std::string>>{
           {"https://h/v1/", "https://h/v1"},
           {"https://h/v1//", "https://h/v1"},
           {"http://h:8080/", "http://h:8080"},
           {"http://[::1]:8080/v1", "http://[::1]:8080/v1"}}) {
    auto parsed = Parse("[[upstream]]\nname = \"a\"\nmodels = [\"m\"]\nbase_url = \"" + url + "\"");
    ASSERT_TRUE(parsed.ok()) << url << ": " << parsed.error().message;
    EXPECT_EQ(parsed->upstreams[0].settings.base_url, expected);
  }
}

struct ErrorCase {
  std::string text;
  std::vector<std::string> expected;  // substrings of the message
};

void ExpectErrors(const std::vector<ErrorCase>& cases,
                  const std::map<std::string, std::string>& env = {}) {
  for (const auto& error_case : cases) {
    auto parsed = Parse(error_case.text, env);
    ASSERT_FALSE(parsed.ok()) << "accepted:\n" << error_case.text;
    const std::string& message = parsed.error().message;
    EXPECT_EQ(parsed.error().kind, ErrorKind::kInvalidArgument) << message;
    EXPECT_EQ(message.rfind(std::string(kFile) + ": ", 0), 0u) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line only: " << message;
    EXPECT_EQ(message.find(kSecret), std::string::npos) << "secret leaked: " << message;
    for (const auto& part : error_case.expected) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "expected \"" << part << "\" in: " << message;
    }
  }
}

TEST(UpstreamsFileTest, InvalidFieldsNameTheFileEntryAndField) {
  const std::string second = OneEntry("") +
                             "[[upstream]]\nname = \"groq\"\n"
                             "base_url = \"https://api.groq.com/openai/v1\"\n"
                             "models = [\"llama*\"]\n";
  ExpectErrors({
      {second + "weight = -1",
       {"upstreams.toml: upstream 2 (\"groq\"): weight: expected an integer 1-10000, got -1"}},
      {second + "weight = 0", {"upstream 2 (\"groq\"): weight:", "got 0"}},
      {second + "weight = 10001", {"upstream 2 (\"groq\"): weight:", "got 10001"}},
      {second + "weight = \"1\"", {"upstream 2 (\"groq\"): weight:", "got a string"}},
      {second + "weight = 1.5", {"upstream 2 (\"groq\"): weight:", "floating-point"}},
      {second + "priority = 1001", {"upstream 2 (\"groq\"): priority:", "-1000 to 1000"}},
      {second + "priority = -1001", {"upstream 2 (\"groq\"): priority:", "got -1001"}},
      {second + "max_concurrent = -1", {"upstream 2 (\"groq\"): max_concurrent:", "0-1000000"}},
      {second + "max_concurrent = 1000001", {"upstream 2 (\"groq\"): max_concurrent:"}},
      {second + "max_retries = 11", {"upstream 2 (\"groq\"): max_retries:", "0-10"}},
      {second + "max_retries = true", {"upstream 2 (\"groq\"): max_retries:", "a boolean"}},
      {second + "connect_timeout_ms = 0", {"upstream 2 (\"groq\"): connect_timeout_ms:"}},
      {second + "first_byte_timeout_ms = 86400001",
       {"upstream 2 (\"groq\"): first_byte_timeout_ms:", "1-86400000"}},
      {second + "idle_timeout_ms = \"60s\"",
       {"upstream 2 (\"groq\"): idle_timeout_ms:", "expected an integer"}},
      {second + "total_timeout_ms = -5", {"upstream 2 (\"groq\"): total_timeout_ms:"}},
      {second + "stream_timeout_ms = [1]",
       {"upstream 2 (\"groq\"): stream_timeout_ms:", "an array"}},
  });
}

TEST(UpstreamsFileTest, RequiredFieldsAndTheirShape) {
  const std::string head = "[[upstream]]\nname = \"a\"\n";
  ExpectErrors({
      {"[[upstream]]\nbase_url = \"http://h\"\nmodels = [\"m\"]",
       {"upstreams.toml: upstream 1: name: missing"}},
      {"[[upstream]]\nname = 5\nbase_url = \"http://h\"\nmodels = [\"m\"]",
       {"upstreams.toml: upstream 1: name: expected a string, got an integer"}},
      {"[[upstream]]\nname = \"bad name\"\nbase_url = \"http://h\"\nmodels = [\"m\"]",
       {"upstreams.toml: upstream 1: name:", "[A-Za-z0-9._-]", "\"bad name\""}},
      {"[[upstream]]\nname = \"\"\nbase_url = \"http://h\"\nmodels = [\"m\"]",
       {"upstreams.toml: upstream 1: name:"}},
      {"[[upstream]]\nname = \"" + std::string(65, 'x') +
           "\"\nbase_url = \"http://h\"\n"
           "models = [\"m\"]",
       {"upstreams.toml: upstream 1: name:", "1-64"}},
      {"[[upstream]]\nname = \"a\\nb\"\nbase_url = \"http://h\"\nmodels = [\"m\"]",
       {"upstreams.toml: upstream 1: name:", "\"a\\x0ab\""}},
      {head + "models = [\"m\"]", {"upstream 1 (\"a\"): base_url: missing"}},
      {head + "models = [\"m\"]\nbase_url = \"ftp://h/v1\"",
       {"upstream 1 (\"a\"): base_url:", "http:// or https://"}},
      {head + "models = [\"m\"]\nbase_url = \"https://\"", {"upstream 1 (\"a\"): base_url:"}},
      {head + "models = [\"m\"]\nbase_url = \"https:///v1\"", {"upstream 1 (\"a\"): base_url:"}},
      {head + "models = [\"m\"]\nbase_url = \"http://h:/v1\"", {"upstream 1 (\"a\"): base_url:"}},
      {head + "models = [\"m\"]\nbase_url = \"http://h:x/v1\"", {"upstream 1 (\"a\"): base_url:"}},
      {head + "models = [\"m\"]\nbase_url = \"http://h/v1?x=1\"",
       {"upstream 1 (\"a\"): base_url:"}},
      {head + "models = [\"m\"]\nbase_url = \"http://h /v1\"", {"upstream 1 (\"a\"): base_url:"}},
      {head + "models = [\"m\"]\nbase_url = 1", {"upstream 1 (\"a\"): base_url:", "a string"}},
      {head + "base_url = \"http://h\"", {"upstream 1 (\"a\"): models: missing"}},
      {head + "base_url = \"http://h\"\nmodels = []",
       {"upstream 1 (\"a\"): models: expected a non-empty array"}},
      {head + "base_url = \"http://h\"\nmodels = \"m\"",
       {"upstream 1 (\"a\"): models:", "got a string"}},
      {head + "base_url = \"http://h\"\nmodels = [\"m\", 2]",
       {"upstream 1 (\"a\"): models: item 2: expected a string, got an integer"}},
      {head + "base_url = \"http://h\"\nmodels = [\"m\", \"\"]",
       {"upstream 1 (\"a\"): models: item 2:"}},
      {head + "base_url = \"http://h\"\nmodels = [\"" + std::string(257, 'm') + "\"]",
       {"upstream 1 (\"a\"): models: item 1:", "1-256"}},
  });
}

TEST(UpstreamsFileTest, RenameTakesExactNames) {
  auto parsed = Parse(OneEntry("[upstream.rename]\n\"b\" = \"B\"\n\"a\" = \"A\""));
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  const std::vector<std::pair<std::string, std::string>> rename = {{"b", "B"}, {"a", "A"}};
  EXPECT_EQ(parsed->upstreams[0].rename, rename);

  ExpectErrors({
      {OneEntry("rename = { \"llama*\" = \"x\" }"),
       {"upstream 1 (\"a\"): rename: \"llama*\":", "'*' or '?'"}},
      {OneEntry("rename = { \"llama?\" = \"x\" }"), {"upstream 1 (\"a\"): rename: \"llama?\":"}},
      {OneEntry("rename = { \"x\" = \"\" }"), {"upstream 1 (\"a\"): rename: \"x\":"}},
      {OneEntry("rename = { \"\" = \"y\" }"), {"upstream 1 (\"a\"): rename: \"\":"}},
      {OneEntry("rename = { \"x\" = 1 }"),
       {"upstream 1 (\"a\"): rename: \"x\": expected a string, got an integer"}},
      {OneEntry("rename = [\"x\"]"), {"upstream 1 (\"a\"): rename:", "an array"}},
  });
}

TEST(UpstreamsFileTest, ApiKeyComesFromTheEnvironment) {
  const std::map<std::string, std::string> env = {
      {"OPENAI_KEY", kSecret}, {"EMPTY_KEY", ""}, {"NEWLINE_KEY", std::string(kSecret) + "\n"}};
  auto parsed = Parse(OneEntry("api_key_env = \"OPENAI_KEY\""), env);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->upstreams[0].settings.api_key, kSecret);

  ExpectErrors(
      {
          {OneEntry("api_key_env = \"MISSING_KEY\""),
           {"upstreams.toml: upstream 1 (\"a\"): api_key_env: MISSING_KEY is not set"}},
          {OneEntry("api_key_env = \"EMPTY_KEY\""),
           {"upstream 1 (\"a\"): api_key_env: EMPTY_KEY is empty"}},
          {OneEntry("api_key_env = \"NEWLINE_KEY\""),
           {"upstream 1 (\"a\"): api_key_env: NEWLINE_KEY", "control character"}},
          {OneEntry("api_key_env = \"1KEY\""),
           {"upstream 1 (\"a\"): api_key_env:", "name of an environment variable"}},
          {OneEntry("api_key_env = \"\""), {"upstream 1 (\"a\"): api_key_env:"}},
          {OneEntry("api_key_env = 3"), {"upstream 1 (\"a\"): api_key_env:", "a string"}},
          // A key pasted where its variable's name belongs is not echoed.
          {OneEntry(std::string("api_key_env = \"") + kSecret + "\""),
           {"upstream 1 (\"a\"): api_key_env:", "not the key itself"}},
      },
      env);

  // A key that happens to be a valid variable name (Groq's) is not echoed either.
  const std::string groq_like = "gsk_4fQ9xT2mLp7RzW1bN8cV3kHj6";
  auto pasted = Parse(OneEntry("api_key_env = \"" + groq_like + "\""), env);
  ASSERT_FALSE(pasted.ok());
  EXPECT_EQ(pasted.error().message.find(groq_like), std::string::npos) << pasted.error().message;
  EXPECT_NE(pasted.error().message.find("api_key_env:"), std::string::npos);
}

TEST(UpstreamsFileTest, InlineApiKeyIsRefused) {
  ExpectErrors({
      {OneEntry(std::string("api_key = \"") + kSecret + "\""),
       {"upstreams.toml: upstream 1 (\"a\"): api_key:", "api_key_env"}},
      {std::string("api_key = \"") + kSecret + "\"\n" + OneEntry(""),
       {"upstreams.toml: api_key:", "api_key_env"}},
  });
}

TEST(UpstreamsFileTest, UnknownFieldsAreErrors) {
  ExpectErrors({
      {"[cooldown]\nwindw = 5\n" + OneEntry(""),
       {"upstreams.toml: cooldown: unknown field \"windw\""}},
      {OneEntry("weigth = 2"), {"upstreams.toml: upstream 1 (\"a\"): unknown field \"weigth\""}},
      {"upstreams = 1\n" + OneEntry(""), {"upstreams.toml: unknown field \"upstreams\""}},
      {OneEntry("[upstream.extra]\nx = 1"), {"upstream 1 (\"a\"): unknown field \"extra\""}},
  });
}

TEST(UpstreamsFileTest, CooldownIsValidated) {
  ExpectErrors({
      {"cooldown = 5\n" + OneEntry(""), {"upstreams.toml: cooldown: expected a table"}},
      {"[cooldown]\nfailures = 0\n" + OneEntry(""),
       {"upstreams.toml: cooldown: failures: expected an integer 1-1000, got 0"}},
      {"[cooldown]\nfailures = 1001\n" + OneEntry(""), {"cooldown: failures:"}},
      {"[cooldown]\nwindow_ms = 0\n" + OneEntry(""), {"cooldown: window_ms:", "1-86400000"}},
      {"[cooldown]\nperiod_ms = 86400001\n" + OneEntry(""), {"cooldown: period_ms:"}},
      {"[cooldown]\nperiod_ms = \"30s\"\n" + OneEntry(""), {"cooldown: period_ms:", "a string"}},
  });
}

TEST(UpstreamsFileTest, UpstreamMustBeANonEmptyArrayOfTables) {
  ExpectErrors({
      {"", {"upstreams.toml: no upstreams"}},
      {"[cooldown]\nfailures = 2\n", {"upstreams.toml: no upstreams"}},
      {"upstream = []\n", {"upstreams.toml: no upstreams"}},
      {"[upstream]\nname = \"a\"\n", {"upstreams.toml: upstream: expected an array of tables"}},
      {"upstream = \"a\"\n", {"upstreams.toml: upstream:", "got a string"}},
      {"upstream = [1]\n", {"upstreams.toml: upstream 1: expected a table, got an integer"}},
  });
}

TEST(UpstreamsFileTest, DuplicateNamesAreErrors) {
  const std::string text = OneEntry("") +
                           "[[upstream]]\nname = \"b\"\nbase_url = \"http://b\"\n"
                           "models = [\"m\"]\n" +
                           OneEntry("");
  ExpectErrors(
      {{text, {"upstreams.toml: upstream 3 (\"a\"): name:", "already used by upstream 1"}}});
}

TEST(UpstreamsFileTest, SyntaxErrorsGiveTheLine) {
  ExpectErrors({
      {"[[upstream]]\nname = \"a\"\nbase_url = \"http://h\"\nmodels = [\"m\"\n",
       {"upstreams.toml: line "}},
      {"[[upstream]]\nname = \"a\"\nname = \"b\"\n", {"upstreams.toml: line 3: "}},
      {"\n\n\nweight = = 2\n", {"upstreams.toml: line 4: "}},
  });
}

TEST(UpstreamsFileTest, LoadReportsAMissingFile) {
  const std::string path =
      "/tmp/staple_upstreams_missing_" + std::to_string(::getpid()) + "/upstreams.toml";
  auto loaded = LoadUpstreams(path, Defaults(), EnvOf({}));
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.error().kind, ErrorKind::kInvalidArgument);
  EXPECT_EQ(loaded.error().message,
            "cannot read STAPLE_UPSTREAMS file " + path + ": No such file or directory");
}

TEST(UpstreamsFileTest, LoadReportsADirectory) {
  auto loaded = LoadUpstreams("/tmp", Defaults(), EnvOf({}));
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.error().message.find("cannot read STAPLE_UPSTREAMS file /tmp: "),
            std::string::npos)
      << loaded.error().message;
}

TEST(UpstreamsFileTest, LoadReadsARealFile) {
  const std::string path = "/tmp/staple_upstreams_test_" + std::to_string(::getpid()) + ".toml";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    ASSERT_TRUE(out) << path;
    out << "[cooldown]\nfailures = 4\n\n[[upstream]]\nname = \"local\"\n"
           "base_url = \"http://localhost:11434/v1/\"\napi_key_env = \"LOCAL_KEY\"\n"
           "models = [\"llama3\"]\nweight = 2\n";
  }
  auto loaded = LoadUpstreams(path, Defaults(), EnvOf({{"LOCAL_KEY", kSecret}}));
  std::remove(path.c_str());
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(loaded->cooldown.failures, 4);
  ASSERT_EQ(loaded->upstreams.size(), 1u);
  EXPECT_EQ(loaded->upstreams[0].name, "local");
  EXPECT_EQ(loaded->upstreams[0].settings.base_url, "http://localhost:11434/v1");
  EXPECT_EQ(loaded->upstreams[0].settings.api_key, kSecret);
  EXPECT_EQ(loaded->upstreams[0].weight, 2u);

  // Errors from a loaded file name it by its path.
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << "[[upstream]]\nname = \"local\"\nbase_url = \"http://h\"\nmodels = [\"m\"]\n"
           "weight = 0\n";
  }
  auto invalid = LoadUpstreams(path, Defaults(), EnvOf({}));
  std::remove(path.c_str());
  ASSERT_FALSE(invalid.ok());
  EXPECT_EQ(invalid.error().message.rfind(path + ": upstream 1 (\"local\"): weight:", 0), 0u)
      << invalid.error().message;
}

}  // namespace
}  // namespace staple::config

namespace staple::config {
namespace {

// The example file of the README's "Upstreams" section is a valid configuration.
TEST(UpstreamsFileReadmeTest, TheReadmeExampleParses) {
  std::ifstream readme(std::string(STAPLE_SOURCE_DIR) + "/README.md");
  ASSERT_TRUE(readme) << "README.md not found";
  const std::string text((std::istreambuf_iterator<char>(readme)),
                         std::istreambuf_iterator<char>());
  const std::string opening = "```toml\n# upstreams.toml";
  const auto begin = text.find(opening);
  ASSERT_NE(begin, std::string::npos) << "the README has no upstreams.toml example";
  const auto body = begin + std::string("```toml\n").size();
  const auto end = text.find("```", body);
  ASSERT_NE(end, std::string::npos);
  const std::map<std::string, std::string> keys = {{"OPENAI_API_KEY", "sk-1"},
                                                   {"OPENAI_PROJECT_B_KEY", "sk-2"},
                                                   {"GROQ_API_KEY", "gsk-3"},
                                                   {"OPENAI_BACKUP_KEY", "sk-4"}};
  Environment environment = [&keys](const std::string& name) -> std::optional<std::string> {
    auto found = keys.find(name);
    if (found == keys.end()) return std::nullopt;
    return found->second;
  };
  auto parsed =
      ParseUpstreams(text.substr(body, end - body), "README.md", upstream::Settings{}, environment);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  ASSERT_EQ(parsed->upstreams.size(), 5u);
  EXPECT_EQ(parsed->upstreams[0].name, "openai");
  EXPECT_EQ(parsed->upstreams[0].hedge_after, std::chrono::milliseconds(800));
  EXPECT_EQ(parsed->upstreams[3].rename.size(), 1u);
  EXPECT_EQ(parsed->upstreams[4].priority, 1);
}

}  // namespace
}  // namespace staple::config
