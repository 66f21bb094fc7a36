// Limits a client cannot step around: IPv6 clients share limits per network prefix, and ids that
// are too long or not UTF-8 are refused before they reach a log line or the store.

#include <gtest/gtest.h>

#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class LimitsTest : public GatewayTest {
 protected:
  std::size_t UpstreamChatRequests() const {
    return fake_.requests_to("POST", "/v1/chat/completions").size();
  }
};

// The server listens on 127.0.0.1 only, so IPv6 clients arrive through a trusted proxy.
TEST_F(LimitsTest, AddressesOfOneIpv6NetworkShareOneLimit) {
  auto staple = StartStaple(
      {{"STAPLE_COMPLETION_LIMIT", "2 per minute"}, {"STAPLE_TRUSTED_PROXIES", "127.0.0.1"}});
  EXPECT_EQ(Complete(*staple, "a", std::nullopt, {{"X-Forwarded-For", "2001:db8:1:2::1"}}).status,
            200);
  EXPECT_EQ(
      Complete(*staple, "b", std::nullopt, {{"X-Forwarded-For", "2001:db8:1:2:ffff::2"}}).status,
      200);
  HttpResponse third =
      Complete(*staple, "c", std::nullopt, {{"X-Forwarded-For", "2001:db8:1:2:1234::3"}});
  EXPECT_EQ(third.status, 429) << "a new address in the same /64 got a fresh limit: " << third.body;
  HttpResponse other_network =
      Complete(*staple, "d", std::nullopt, {{"X-Forwarded-For", "2001:db8:1:3::1"}});
  EXPECT_EQ(other_network.status, 200) << other_network.body;
  EXPECT_EQ(UpstreamChatRequests(), 3u);
}

TEST_F(LimitsTest, Prefix128LimitsEachIpv6AddressOnItsOwn) {
  auto staple = StartStaple({{"STAPLE_COMPLETION_LIMIT", "1 per minute"},
                             {"STAPLE_TRUSTED_PROXIES", "127.0.0.1"},
                             {"STAPLE_IPV6_PREFIX", "128"}});
  EXPECT_EQ(Complete(*staple, "a", std::nullopt, {{"X-Forwarded-For", "2001:db8:1:2::1"}}).status,
            200);
  EXPECT_EQ(Complete(*staple, "b", std::nullopt, {{"X-Forwarded-For", "2001:db8:1:2::2"}}).status,
            200);
  EXPECT_EQ(Complete(*staple, "c", std::nullopt, {{"X-Forwarded-For", "2001:db8:1:2::2"}}).status,
            429);
}

// STAPLE_LIMITER_MAX_CLIENTS: past the cap the least recently seen clients are forgotten, and
// /metrics counts them.
TEST_F(LimitsTest, TheLimiterForgetsClientsBeyondItsCapAndCountsThem) {
  auto staple = StartStaple({{"STAPLE_COMPLETION_LIMIT", "5 per minute"},
                             {"STAPLE_DEFAULT_LIMITS", ""},
                             {"STAPLE_TRUSTED_PROXIES", "127.0.0.1"},
                             {"STAPLE_LIMITER_MAX_CLIENTS", "1"}});
  for (int i = 0; i < 300; ++i) {
    const Headers client = {{"X-Forwarded-For", "198.51.100." + std::to_string(i % 250)}};
    ASSERT_EQ(Complete(*staple, "p", std::nullopt, client).status, 200) << "client " << i;
  }
  auto metrics = client_.Get(staple->url() + "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("# TYPE staple_limiter_evictions_total counter"), std::string::npos)
      << metrics.body;
  const auto at = metrics.body.find("\nstaple_limiter_evictions_total ");
  ASSERT_NE(at, std::string::npos) << metrics.body;
  EXPECT_GT(std::stod(metrics.body.substr(at + 32)), 0) << metrics.body;
  const auto entries = metrics.body.find("\nstaple_limiter_entries ");
  ASSERT_NE(entries, std::string::npos) << metrics.body;
  EXPECT_LE(std::stod(metrics.body.substr(entries + 24)), 64) << "one entry per shard at most";
}

TEST_F(LimitsTest, OverlongPathUserIdIs400AndTheAccessLogCutsThePath) {
  auto staple = StartStaple({{"STAPLE_ACCESS_LOG", "true"}});
  const std::string id(5000, 'x');
  for (const char* method : {"GET", "DELETE"}) {
    HttpResponse response = client_.Request(method, staple->url() + "/users/" + id + "/messages");
    EXPECT_EQ(response.status, 400) << method;
    EXPECT_EQ(ErrorMessage(response), "user_id is too long (at most 256 bytes)") << response.body;
  }
  const std::string logs = staple->Stdout() + staple->AllStderr();
  EXPECT_NE(logs.find("/users/" + std::string(505, 'x') + "\u2026"), std::string::npos)
      << "the access log does not show the cut path";
  EXPECT_EQ(logs.find(std::string(600, 'x')), std::string::npos)
      << "the access log holds the whole id";
}

TEST_F(LimitsTest, ConversationHeaderMustBeUtf8) {
  auto staple = StartStaple();
  const json body = {{"model", "gpt-4o-mini"},
                     {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  HttpResponse response = client_.PostJson(staple->url() + "/v1/chat/completions", body,
                                           {{"X-Staple-Conversation", "conv-\xC3("}});
  EXPECT_EQ(response.status, 400) << response.body;
  EXPECT_EQ(response.Json()["error"]["type"], "invalid_request_error") << response.body;
  EXPECT_EQ(UpstreamChatRequests(), 0u);
}

}  // namespace
}  // namespace staple::testing
