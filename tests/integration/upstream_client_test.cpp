// STAPLE_UPSTREAM_CLIENT: the gateway answers through either HTTP client, and says which one runs.
#include <gtest/gtest.h>

#include <map>
#include <ostream>
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

// What /v1/chat/completions answers for one fault of fake_openai: the status and the error type
// (or "ok"), whole and streamed.
struct FaultOutcome {
  long status = 0;
  std::string type;
  bool operator==(const FaultOutcome&) const = default;
};

std::ostream& operator<<(std::ostream& out, const FaultOutcome& outcome) {
  return out << outcome.status << " " << outcome.type;
}

// Both clients turn the upstream's faults into the same answers: retried 503s, passed-through
// 4xx, a dropped connection, a body that is not JSON, a silent upstream, a stream cut short.
TEST_F(UpstreamClientTest, BothClientsAnswerTheUpstreamsFaultsAlike) {
  const std::vector<std::string> faults = {"FAULT:flaky=KIND",   "FAULT:status=400",
                                           "FAULT:status=503",   "FAULT:drop",
                                           "FAULT:invalid-json", "FAULT:hang"};
  std::map<std::string, std::vector<FaultOutcome>> outcomes;
  for (const std::string kind : {"asio", "curl"}) {
    SCOPED_TRACE(kind);
    auto staple = StartStaple({{"STAPLE_UPSTREAM_CLIENT", kind},
                               {"STAPLE_UPSTREAM_TIMEOUT", "1"},
                               {"STAPLE_UPSTREAM_RETRIES", "1"}});
    for (std::string fault : faults) {
      if (const auto at = fault.find("KIND"); at != std::string::npos) fault.replace(at, 4, kind);
      HttpResponse response = client_.PostJson(staple->url() + "/v1/chat/completions",
                                               ChatBody("fault " + fault, false));
      json body = response.Json();
      FaultOutcome outcome{response.status, "ok"};
      if (response.status != 200) {
        outcome.type = body.is_object() && body.contains("error") && body["error"].is_object()
                           ? body["error"].value("type", "?")
                           : "not an OpenAI error";
      }
      outcomes[kind].push_back(outcome);
      EXPECT_EQ(response.body.find(kTestApiKey), std::string::npos) << fault;
    }
    // A stream the upstream cuts after two chunks ends with an error event.
    StreamResponse cut = client_.Stream("POST", staple->url() + "/v1/chat/completions",
                                        ChatBody("cut FAULT:stream-drop-after=2", true).dump(),
                                        {{"Content-Type", "application/json"}});
    EXPECT_EQ(cut.status, 200) << cut.body;
    const auto events = ParseSseData(cut.body);
    ASSERT_FALSE(events.empty()) << cut.body;
    EXPECT_NE(events.back().find("\"error\""), std::string::npos) << cut.body;
  }
  ASSERT_EQ(outcomes["asio"].size(), faults.size());
  EXPECT_EQ(outcomes["asio"], outcomes["curl"]);
  EXPECT_EQ(outcomes["asio"][0], (FaultOutcome{200, "ok"}));  // the flaky 503 was retried
  EXPECT_EQ(outcomes["asio"][1].status, 400);                 // the upstream's own 4xx
  for (std::size_t i = 2; i < faults.size(); ++i) {
    EXPECT_GE(outcomes["asio"][i].status, 500) << faults[i];
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
