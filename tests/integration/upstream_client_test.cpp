// STAPLE_UPSTREAM_CLIENT: the gateway answers through either HTTP client, and says which one runs.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "support/gateway_test.h"
#include "support/temp_dir.h"

namespace staple::testing {
namespace {

using nlohmann::json;

json ChatBody(const std::string& prompt, bool stream) {
  return {{"model", "m"},
          {"stream", stream},
          {"messages", json::array({{{"role", "user"}, {"content", prompt}}})}};
}

class UpstreamClientTest : public GatewayTest {
 protected:
  // One whole and one streamed /v1/chat/completions through `staple`, both echoed by fake_.
  void ExpectWholeAndStreamedAnswers(const StapleServer& staple, const std::string& kind) {
    HttpResponse whole =
        client_.PostJson(staple.url() + "/v1/chat/completions", ChatBody("whole " + kind, false));
    ASSERT_EQ(whole.status, 200) << whole.body;
    EXPECT_EQ(whole.Json()["choices"][0]["message"]["content"], "echo(1): whole " + kind);

    StreamResponse streamed = client_.Stream("POST", staple.url() + "/v1/chat/completions",
                                             ChatBody("streamed " + kind, true).dump(),
                                             {{"Content-Type", "application/json"}});
    ASSERT_EQ(streamed.status, 200) << streamed.body;
    std::string text;
    for (const auto& data : ParseSseData(streamed.body)) {
      json chunk = json::parse(data, nullptr, false);
      if (!chunk.is_object() || chunk["choices"].empty()) continue;
      const json& delta = chunk["choices"][0]["delta"];
      if (delta.contains("content") && delta["content"].is_string()) {
        text += delta["content"].get<std::string>();
      }
    }
    EXPECT_EQ(text, "echo(1): streamed " + kind);
  }
};

TEST_F(UpstreamClientTest, EitherClientAnswersWholeAndStreamed) {
  for (const std::string kind : {"asio", "curl"}) {
    SCOPED_TRACE(kind);
    auto staple = StartStaple({{"STAPLE_UPSTREAM_CLIENT", kind}});
    ExpectWholeAndStreamedAnswers(*staple, kind);
    EXPECT_NE(staple->AllStderr().find("client=" + kind), std::string::npos) << staple->AllStderr();
  }
}

// auto: the Asio client, but libcurl once a proxy variable is set (it honours NO_PROXY, so the
// loopback upstream is still reached directly).
TEST_F(UpstreamClientTest, AutoPicksLibcurlWhenAProxyIsConfigured) {
  auto plain = StartStaple();
  EXPECT_NE(plain->AllStderr().find("client=asio"), std::string::npos) << plain->AllStderr();
  auto proxied = StartStaple({{"HTTPS_PROXY", "http://127.0.0.1:9"},
                              {"http_proxy", "http://127.0.0.1:9"},
                              {"NO_PROXY", "127.0.0.1,localhost"}});
  ExpectWholeAndStreamedAnswers(*proxied, "auto");
  EXPECT_NE(proxied->AllStderr().find("client=curl"), std::string::npos) << proxied->AllStderr();
}

TEST_F(UpstreamClientTest, AnUnknownClientStopsStartUpNamingTheVariable) {
  TempDir dir;
  auto result =
      RunStaple({"serve", "--port", "0"}, {{"STAPLE_UPSTREAM_CLIENT", "libcurl"}}, dir.path());
  ASSERT_TRUE(result.status.has_value());
  EXPECT_EQ(result.status->code, 2) << result.err;
  EXPECT_NE(result.err.find("STAPLE_UPSTREAM_CLIENT"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("auto, asio or curl"), std::string::npos) << result.err;
}

}  // namespace
}  // namespace staple::testing
