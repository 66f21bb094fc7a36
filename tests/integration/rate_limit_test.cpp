// Rate limits of the seed endpoint: defaults, configured limits, headers, client identity.

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class RateLimitTest : public GatewayTest {
 protected:
  std::size_t UpstreamChatRequests() const {
    return fake_.requests_to("POST", "/v1/chat/completions").size();
  }
};

std::int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The header as an integer; fails the test and returns -1 when absent or not a number.
std::int64_t IntHeader(const HttpResponse& response, const std::string& name) {
  auto value = response.Header(name);
  if (!value) {
    ADD_FAILURE() << "missing header " << name << " (status " << response.status << ")";
    return -1;
  }
  try {
    std::size_t used = 0;
    std::int64_t number = std::stoll(*value, &used);
    if (used == value->size()) return number;
  } catch (const std::exception&) {
  }
  ADD_FAILURE() << "header " << name << " is not an integer: " << *value;
  return -1;
}

void ExpectRejected(const HttpResponse& response, const std::string& message, int limit) {
  EXPECT_EQ(response.status, 429) << response.body;
  EXPECT_EQ(response.Json(), json({{"error", "Rate limit exceeded"}, {"message", message}}))
      << response.body;
  EXPECT_EQ(IntHeader(response, "X-RateLimit-Limit"), limit);
  EXPECT_EQ(IntHeader(response, "X-RateLimit-Remaining"), 0);
  const std::int64_t reset = IntHeader(response, "X-RateLimit-Reset");
  EXPECT_GE(reset, UnixNow() - 1) << "X-RateLimit-Reset is not Unix seconds in the future";
  EXPECT_GT(IntHeader(response, "Retry-After"), 0);
}

TEST_F(RateLimitTest, CompletionsAreLimitedToTenPerMinute) {
  auto staple = StartStaple();
  for (int i = 0; i < 10; ++i) {
    HttpResponse response = Complete(*staple, "request " + std::to_string(i));
    ASSERT_EQ(response.status, 200) << "request " << i << ": " << response.body;
    EXPECT_EQ(IntHeader(response, "X-RateLimit-Limit"), 10) << "request " << i;
    EXPECT_EQ(IntHeader(response, "X-RateLimit-Remaining"), 9 - i) << "request " << i;
    const std::int64_t reset = IntHeader(response, "X-RateLimit-Reset");
    EXPECT_GE(reset, UnixNow() - 1);
    EXPECT_LE(reset, UnixNow() + 61);
  }
  HttpResponse rejected = Complete(*staple, "one too many");
  ExpectRejected(rejected, "10 per 1 minute", 10);
  EXPECT_LE(IntHeader(rejected, "Retry-After"), 60);
  EXPECT_LE(IntHeader(rejected, "X-RateLimit-Reset"), UnixNow() + 61);
  EXPECT_EQ(UpstreamChatRequests(), 10u) << "a rejected request reached the upstream";
}

TEST_F(RateLimitTest, ConfiguredDefaultLimitsApplyWhenTheCompletionLimitIsOff) {
  auto staple =
      StartStaple({{"STAPLE_COMPLETION_LIMIT", ""}, {"STAPLE_DEFAULT_LIMITS", "3 per hour"}});
  for (int i = 0; i < 3; ++i) {
    HttpResponse response = Complete(*staple, "request " + std::to_string(i));
    ASSERT_EQ(response.status, 200) << "request " << i << ": " << response.body;
    EXPECT_EQ(IntHeader(response, "X-RateLimit-Remaining"), 2 - i) << "request " << i;
  }
  HttpResponse rejected = Complete(*staple, "one too many");
  ExpectRejected(rejected, "3 per 1 hour", 3);
  EXPECT_LE(IntHeader(rejected, "Retry-After"), 3600);
  EXPECT_EQ(UpstreamChatRequests(), 3u) << "a rejected request reached the upstream";
}

// With default and route limits both set, the refusal names whichever limit ran out.
TEST_F(RateLimitTest, TheRefusalNamesTheLimitThatRanOut) {
  {
    auto staple = StartStaple(
        {{"STAPLE_DEFAULT_LIMITS", "100 per hour"}, {"STAPLE_COMPLETION_LIMIT", "2 per minute"}});
    for (const char* prompt : {"r0", "r1"}) ASSERT_EQ(Complete(*staple, prompt).status, 200);
    ExpectRejected(Complete(*staple, "route limit"), "2 per 1 minute", 2);
  }
  {
    auto staple = StartStaple(
        {{"STAPLE_DEFAULT_LIMITS", "2 per hour"}, {"STAPLE_COMPLETION_LIMIT", "100 per minute"}});
    for (const char* prompt : {"d0", "d1"}) ASSERT_EQ(Complete(*staple, prompt).status, 200);
    ExpectRejected(Complete(*staple, "default limit"), "2 per 1 hour", 2);
  }
}

TEST_F(RateLimitTest, ForwardedForIsIgnoredByDefault) {
  auto staple = StartStaple({{"STAPLE_COMPLETION_LIMIT", "2 per minute"}});
  EXPECT_EQ(Complete(*staple, "a", std::nullopt, {{"X-Forwarded-For", "10.0.0.1"}}).status, 200);
  EXPECT_EQ(Complete(*staple, "b", std::nullopt, {{"X-Forwarded-For", "10.0.0.2"}}).status, 200);
  HttpResponse third = Complete(*staple, "c", std::nullopt, {{"X-Forwarded-For", "10.0.0.3"}});
  ExpectRejected(third, "2 per 1 minute", 2);
  EXPECT_EQ(UpstreamChatRequests(), 2u);
}

TEST_F(RateLimitTest, ForwardedForIsHonouredFromATrustedProxy) {
  auto staple = StartStaple(
      {{"STAPLE_COMPLETION_LIMIT", "2 per minute"}, {"STAPLE_TRUSTED_PROXIES", "127.0.0.1"}});
  const Headers client_a = {{"X-Forwarded-For", "10.0.0.1"}};
  const Headers client_b = {{"X-Forwarded-For", "10.0.0.2"}};
  EXPECT_EQ(Complete(*staple, "a1", std::nullopt, client_a).status, 200);
  EXPECT_EQ(Complete(*staple, "a2", std::nullopt, client_a).status, 200);
  ExpectRejected(Complete(*staple, "a3", std::nullopt, client_a), "2 per 1 minute", 2);

  EXPECT_EQ(Complete(*staple, "b1", std::nullopt, client_b).status, 200);
  EXPECT_EQ(Complete(*staple, "b2", std::nullopt, client_b).status, 200);
  ExpectRejected(Complete(*staple, "b3", std::nullopt, client_b), "2 per 1 minute", 2);
  EXPECT_EQ(UpstreamChatRequests(), 4u);
}

}  // namespace
}  // namespace staple::testing
