// `staple serve --demo`: with no key and no upstream, the built-in demo upstream answers every
// route (seed, /v1 whole and streamed, models, embeddings), turns are stored as usual, and the
// start-up log says that answers are echoes.

#include <gtest/gtest.h>

#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class DemoTest : public GatewayTest {
 protected:
  std::unique_ptr<StapleServer> StartDemo(std::vector<std::string> args = {"--demo"},
                                          std::map<std::string, std::string> env = {}) {
    StapleOptions options;  // no OPENAI_* at all
    options.env = std::move(env);
    options.extra_args = std::move(args);
    return std::make_unique<StapleServer>(std::move(options));
  }
};

TEST_F(DemoTest, EveryRouteAnswersWithoutAKeyAndTurnsAreStored) {
  auto staple = StartDemo();
  EXPECT_NE(staple->Stderr().find("demo mode"), std::string::npos) << staple->Stderr();

  const json first = Turn(*staple, "Hello there", std::string("demo-user"));
  EXPECT_EQ(first.value("completion", ""), "echo(1): Hello there");
  const json second = Turn(*staple, "And again", std::string("demo-user"));
  EXPECT_EQ(second.value("completion", ""), "echo(3): And again")
      << "the stored history went to the demo upstream";

  StreamResponse streamed = client_.Stream(
      "POST", staple->url() + "/v1/chat/completions",
      json{{"model", "gpt-4o-mini"},
           {"stream", true},
           {"messages", {{{"role", "user"}, {"content", "stream me please"}}}}}
          .dump(),
      {{"Content-Type", "application/json"}, {"X-Staple-Conversation", "demo-stream"}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  const auto events = ParseSseData(streamed.body);
  ASSERT_GE(events.size(), 4u) << streamed.body;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (const auto& event : events) {
    const auto chunk = json::parse(event, nullptr, false);
    if (!chunk.is_object()) continue;
    const auto& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content") && delta["content"].is_string()) {
      text += delta["content"].get<std::string>();
    }
  }
  EXPECT_EQ(text, "echo(1): stream me please");
  EXPECT_GT(streamed.chunks.size(), 1u) << "the demo answer streams in pieces";

  HttpResponse stored = client_.Get(staple->url() + "/users/demo-stream/messages");
  ASSERT_EQ(stored.status, 200) << stored.body;
  EXPECT_NE(stored.body.find("echo(1): stream me please"), std::string::npos) << stored.body;

  HttpResponse models = client_.Get(staple->url() + "/v1/models");
  ASSERT_EQ(models.status, 200) << models.body;
  EXPECT_NE(models.body.find("gpt-4o-mini"), std::string::npos) << models.body;
  HttpResponse embedded =
      client_.PostJson(staple->url() + "/v1/embeddings", json{{"model", "e"}, {"input", "x"}});
  EXPECT_EQ(embedded.status, 200) << embedded.body;
  HttpResponse unknown = client_.Get(staple->url() + "/v1/files");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_TRUE(unknown.Json()["error"].is_object()) << unknown.body;

  // Nothing left the process: the fake upstream of this fixture heard nothing.
  EXPECT_TRUE(fake_.requests().empty()) << fake_.requests().dump();
}

TEST_F(DemoTest, TheVariableWorksAsTheFlagAndExcludesAnUpstreamsFile) {
  auto staple = StartDemo({}, {{"STAPLE_DEMO", "true"}});
  EXPECT_EQ(Turn(*staple, "hi").value("completion", ""), "echo(1): hi");

  TempDir dir;
  auto refused =
      RunStaple({"serve", "--port", "0", "--demo", "--upstreams", "u.toml"}, {}, dir.path());
  ASSERT_TRUE(refused.status.has_value());
  EXPECT_EQ(refused.status->code, 2) << refused.err;
  EXPECT_NE(refused.err.find("STAPLE_DEMO and STAPLE_UPSTREAMS"), std::string::npos) << refused.err;
}

}  // namespace
}  // namespace staple::testing
