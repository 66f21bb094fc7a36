// Token limits (STAPLE_TOKEN_LIMITS): each chat request reserves its estimated cost before the
// upstream is asked, the reservation is replaced by the upstream's reported usage when the answer
// completes (streams included), and concurrent requests can never take more than the limit between
// them — on the in-process limiter and across two replicas sharing Redis.
//
// The expected figures follow the documented estimate: 3 tokens + per message (4 + its text bytes
// / 4, rounded up), plus the request's max tokens or STAPLE_TOKEN_COMPLETION_RESERVE. fake_openai
// reports usage as prompt characters / 4 and reply characters / 4 (rounded up), its reply being
// "echo(N): <last user message>".

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support/gateway_test.h"
#include "support/redis_server.h"

namespace staple::testing {
namespace {

using nlohmann::json;

constexpr std::int64_t kReserve = 100;

std::int64_t TextTokens(const std::string& text) {
  return static_cast<std::int64_t>((text.size() + 3) / 4);
}

// Staple's reservation for a request whose messages are `contents` and that sets no max tokens.
std::int64_t Reservation(const std::vector<std::string>& contents,
                         std::int64_t completion = kReserve) {
  std::int64_t total = 3 + completion;
  for (const auto& content : contents) total += 4 + TextTokens(content);
  return total;
}

// What fake_openai reports for a one-message conversation with `prompt` (ASCII).
std::int64_t FakeUsage(const std::string& prompt) {
  return TextTokens(prompt) + TextTokens("echo(1): " + prompt);
}

std::int64_t RemainingTokens(const HttpResponse& response) {
  auto value = response.Header("X-RateLimit-Remaining-Tokens");
  EXPECT_TRUE(value.has_value()) << response.status << " " << response.body;
  return value ? std::stoll(*value) : -1;
}

json ChatBody(const std::string& content) {
  return {{"model", "fake-model"}, {"messages", {{{"role", "user"}, {"content", content}}}}};
}

class TokenLimitsTest : public GatewayTest {
 protected:
  // Token limits only: the request limits are lifted so that they never decide.
  static std::map<std::string, std::string> TokenEnv(const std::string& limit) {
    return {{"STAPLE_TOKEN_LIMITS", limit},
            {"STAPLE_TOKEN_COMPLETION_RESERVE", std::to_string(kReserve)},
            {"STAPLE_DEFAULT_LIMITS", ""},
            {"STAPLE_COMPLETION_LIMIT", ""}};
  }

  HttpResponse Chat(const StapleServer& staple, const json& body) {
    return client_.PostJson(staple.url() + "/v1/chat/completions", body);
  }

  // Sends `count` seed requests with `prompt` at once, from one thread each, alternating over
  // `replicas`; returns the responses in sending order.
  static std::vector<HttpResponse> Burst(const std::vector<const StapleServer*>& replicas,
                                         const std::string& prompt, int count) {
    std::vector<HttpResponse> responses(static_cast<std::size_t>(count));
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < count; ++i) {
      threads.emplace_back([&, i] {
        HttpClient client;
        const StapleServer& replica = *replicas[static_cast<std::size_t>(i) % replicas.size()];
        ready.fetch_add(1);
        while (ready.load() < count) std::this_thread::yield();
        responses[static_cast<std::size_t>(i)] =
            client.PostJson(replica.url() + "/openai-completion", json{{"prompt", prompt}});
      });
    }
    for (auto& thread : threads) thread.join();
    return responses;
  }

  // Checks a burst: exactly `admitted` answers are 200, the rest are token 429s.
  static void ExpectAdmitted(const std::vector<HttpResponse>& responses, int admitted) {
    int passed = 0;
    for (const auto& response : responses) {
      if (response.status == 200) {
        ++passed;
        continue;
      }
      EXPECT_EQ(response.status, 429) << response.body;
      json body = response.Json();
      ASSERT_TRUE(body.is_object()) << response.body;
      EXPECT_EQ(body.value("error", ""), "Rate limit exceeded");
      EXPECT_EQ(body.value("message", "").rfind("token limit 1000 per 1 minute", 0), 0u)
          << response.body;
      EXPECT_TRUE(response.Header("Retry-After").has_value());
    }
    EXPECT_EQ(passed, admitted);
  }
};

// Sequential /v1 requests: each one's headers show the limit minus what earlier answers really
// cost (not what they reserved) minus its own reservation. An upstream error gives its reservation
// back; an answer larger than its reservation is charged in full.
TEST_F(TokenLimitsTest, ReservationsAreReplacedByReportedUsage) {
  auto staple = StartStaple(TokenEnv("1000 per minute"));
  const std::string hello = "hello there";
  std::int64_t used = 0;

  HttpResponse first = Chat(*staple, ChatBody(hello));
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(first.Header("X-RateLimit-Limit-Tokens").value_or(""), "1000");
  EXPECT_TRUE(first.Header("X-RateLimit-Reset-Tokens").has_value());
  EXPECT_EQ(RemainingTokens(first), 1000 - Reservation({hello}));
  const std::int64_t first_usage = first.Json()["usage"]["total_tokens"].get<std::int64_t>();
  EXPECT_EQ(first_usage, FakeUsage(hello));
  EXPECT_LT(first_usage, Reservation({hello}));
  used += first_usage;

  HttpResponse second = Chat(*staple, ChatBody(hello));
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(RemainingTokens(second), 1000 - used - Reservation({hello}));
  used += FakeUsage(hello);

  // The upstream refuses: its status goes to the client and the reservation comes back.
  HttpResponse refused = Chat(*staple, ChatBody("FAULT:status=400"));
  EXPECT_EQ(refused.status, 400) << refused.body;
  EXPECT_EQ(RemainingTokens(refused), 1000 - used - Reservation({"FAULT:status=400"}));

  // max_tokens replaces the configured reserve; the fake ignores it and answers at length, so
  // the usage beyond the reservation is charged.
  const std::string long_prompt(400, 'x');
  json bounded = ChatBody(long_prompt);
  bounded["max_tokens"] = 1;
  HttpResponse charged = Chat(*staple, bounded);
  ASSERT_EQ(charged.status, 200) << charged.body;
  EXPECT_EQ(RemainingTokens(charged), 1000 - used - Reservation({long_prompt}, 1));
  const std::int64_t charged_usage = charged.Json()["usage"]["total_tokens"].get<std::int64_t>();
  ASSERT_GT(charged_usage, Reservation({long_prompt}, 1));
  used += charged_usage;

  HttpResponse after = Chat(*staple, ChatBody(hello));
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(RemainingTokens(after), 1000 - used - Reservation({hello}));
}

// A continued conversation reserves for the history that goes upstream with the new prompt.
// /v1/responses spends the same token budget: its reservation counts the chain it sends, and
// the answer's usage replaces it.
TEST_F(TokenLimitsTest, ResponsesReserveTheirChainAndSettleWithUsage) {
  auto staple = StartStaple(TokenEnv("1000 per minute"));
  auto respond = [&](const json& body) {
    return client_.PostJson(staple->url() + "/v1/responses", body.dump());
  };
  HttpResponse first = respond({{"model", "m"}, {"input", "one"}});
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(RemainingTokens(first), 1000 - Reservation({"one"}));
  const std::int64_t first_usage = first.Json()["usage"]["total_tokens"].get<std::int64_t>();
  EXPECT_EQ(first_usage, FakeUsage("one"));

  HttpResponse second =
      respond({{"model", "m"}, {"input", "two"}, {"previous_response_id", first.Json()["id"]}});
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(RemainingTokens(second),
            1000 - first_usage - Reservation({"one", "echo(1): one", "two"}));

  // Past the budget: a 429 in OpenAI's shape, nothing asked upstream.
  auto tight = StartStaple(TokenEnv("50 per minute"));
  const std::size_t asked = fake_.chat_bodies().size();
  HttpResponse refused = client_.PostJson(tight->url() + "/v1/responses",
                                          json{{"model", "m"}, {"input", "three"}}.dump());
  EXPECT_EQ(refused.status, 429) << refused.body;
  EXPECT_EQ(refused.Json()["error"].value("code", ""), "rate_limit_exceeded") << refused.body;
  EXPECT_EQ(fake_.chat_bodies().size(), asked);
}

TEST_F(TokenLimitsTest, SeedReservationCountsTheHistorySent) {
  auto staple = StartStaple(TokenEnv("1000 per minute"));
  json first = Turn(*staple, "one", std::string("alice"));
  ASSERT_TRUE(first.is_object());
  HttpResponse second = Complete(*staple, "two", std::string("alice"));
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(RemainingTokens(second),
            1000 - FakeUsage("one") - Reservation({"one", "echo(1): one", "two"}));
}

// Streams settle too: the seed stream with the usage Staple asks for, a /v1 stream without usage
// by the estimate of its answer's length, a /v1 stream with usage exactly.
TEST_F(TokenLimitsTest, StreamsAreSettledWhenTheyComplete) {
  auto staple = StartStaple(TokenEnv("1000 per minute"));
  const std::string prompt = "stream me";
  const Headers json_type = {{"Content-Type", "application/json"}};
  std::int64_t used = 0;

  StreamResponse seed =
      client_.Stream("POST", staple->url() + "/openai-completion",
                     json{{"prompt", prompt}, {"stream", true}}.dump(), json_type);
  ASSERT_EQ(seed.status, 200) << seed.body;
  EXPECT_EQ(RemainingTokens(seed), 1000 - Reservation({prompt}));
  ASSERT_NE(seed.body.find("[DONE]"), std::string::npos) << seed.body;
  used += FakeUsage(prompt);

  json plain = ChatBody(prompt);
  plain["stream"] = true;
  StreamResponse without_usage =
      client_.Stream("POST", staple->url() + "/v1/chat/completions", plain.dump(), json_type);
  ASSERT_EQ(without_usage.status, 200) << without_usage.body;
  EXPECT_EQ(RemainingTokens(without_usage), 1000 - used - Reservation({prompt}));
  EXPECT_EQ(without_usage.body.find("\"usage\":{"), std::string::npos) << without_usage.body;
  // No usage reported: the prompt estimate plus the answer's length / 4.
  used += Reservation({prompt}, 0) + TextTokens("echo(1): " + prompt);

  json counted = plain;
  counted["stream_options"] = {{"include_usage", true}};
  StreamResponse with_usage =
      client_.Stream("POST", staple->url() + "/v1/chat/completions", counted.dump(), json_type);
  ASSERT_EQ(with_usage.status, 200) << with_usage.body;
  EXPECT_EQ(RemainingTokens(with_usage), 1000 - used - Reservation({prompt}));
  used += FakeUsage(prompt);

  HttpResponse after = Chat(*staple, ChatBody(prompt));
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(RemainingTokens(after), 1000 - used - Reservation({prompt}));
}

// Twenty requests at once while the upstream takes 1.5 s: reservations are made before any answer
// comes back, so exactly floor(1000 / reservation) pass and the upstream sees only those. Once they
// are answered, what they really used is what stays counted.
TEST_F(TokenLimitsTest, ConcurrentRequestsCannotOvershoot) {
  auto staple = StartStaple(TokenEnv("1000 per minute"));
  const std::string slow = "FAULT:sleep=1500 go";
  const std::int64_t reservation = Reservation({slow});
  const int admitted = static_cast<int>(1000 / reservation);
  ASSERT_EQ(admitted, 8);

  auto responses = Burst({staple.get()}, slow, 20);
  ExpectAdmitted(responses, admitted);
  EXPECT_EQ(fake_.chat_bodies().size(), static_cast<std::size_t>(admitted));

  HttpResponse after = Complete(*staple, "go");
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(RemainingTokens(after), 1000 - admitted * FakeUsage(slow) - Reservation({"go"}));
}

// The answer when a token limit refuses, in both API shapes; a request that alone exceeds the
// limit says so and never reaches the upstream.
TEST_F(TokenLimitsTest, RefusalsSayTheyAreAboutTokens) {
  auto staple = StartStaple(TokenEnv("50 per minute"));

  HttpResponse seed = Complete(*staple, "hi");
  EXPECT_EQ(seed.status, 429) << seed.body;
  json seed_body = seed.Json();
  ASSERT_TRUE(seed_body.is_object()) << seed.body;
  EXPECT_EQ(seed_body.value("error", ""), "Rate limit exceeded");
  const std::string seed_message = seed_body.value("message", "");
  EXPECT_EQ(seed_message.rfind("token limit 50 per 1 minute", 0), 0u) << seed_message;
  EXPECT_NE(seed_message.find("the request alone exceeds the limit"), std::string::npos);
  EXPECT_EQ(seed.Header("Retry-After").value_or(""), "60");
  EXPECT_EQ(seed.Header("X-RateLimit-Limit-Tokens").value_or(""), "50");

  HttpResponse v1 = Chat(*staple, ChatBody("hi"));
  EXPECT_EQ(v1.status, 429) << v1.body;
  json error = v1.Json()["error"];
  ASSERT_TRUE(error.is_object()) << v1.body;
  EXPECT_EQ(error.value("type", ""), "tokens");
  EXPECT_EQ(error.value("code", ""), "rate_limit_exceeded");
  EXPECT_NE(error.value("message", "").find("Rate limit exceeded on tokens: 50 per 1 minute"),
            std::string::npos)
      << v1.body;
  EXPECT_TRUE(v1.Header("X-Staple-Conversation").has_value());

  // A request that bounds its answer can fit.
  json small = ChatBody("hi");
  small["max_tokens"] = 5;
  HttpResponse fits = Chat(*staple, small);
  EXPECT_EQ(fits.status, 200) << fits.body;
  EXPECT_EQ(fake_.chat_bodies().size(), 1u);

  HttpResponse metrics = client_.Get(staple->url() + "/metrics");
  EXPECT_NE(metrics.body.find("staple_token_limit_decisions_total{decision=\"denied\"} 2"),
            std::string::npos);
  EXPECT_NE(metrics.body.find("staple_token_limit_decisions_total{decision=\"allowed\"} 1"),
            std::string::npos);
}

// Two replicas sharing Redis: one token budget. The burst alternates over both replicas.
TEST_F(TokenLimitsTest, TwoReplicasShareOneExactBudgetInRedis) {
  RedisServer redis;
  auto env = TokenEnv("1000 per minute");
  env["STAPLE_RATELIMIT_STORAGE"] = redis.url();
  auto a = StartStaple(env);
  auto b = StartStaple(env);
  const std::string slow = "FAULT:sleep=1500 go";
  const int admitted = static_cast<int>(1000 / Reservation({slow}));

  auto responses = Burst({a.get(), b.get()}, slow, 20);
  ExpectAdmitted(responses, admitted);
  EXPECT_EQ(fake_.chat_bodies().size(), static_cast<std::size_t>(admitted));

  // The refunds of both replicas landed in the same counter.
  HttpResponse after = Complete(*b, "go");
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(RemainingTokens(after), 1000 - admitted * FakeUsage(slow) - Reservation({"go"}));
  HttpResponse again = Complete(*a, "go");
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(RemainingTokens(again),
            1000 - admitted * FakeUsage(slow) - FakeUsage("go") - Reservation({"go"}));
}

}  // namespace
}  // namespace staple::testing
