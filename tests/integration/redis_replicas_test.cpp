// Replicas sharing one Redis for limit counters: one exact limit across replicas, and the
// fail-open/closed policy while Redis is down.

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>

#include "support/gateway_test.h"
#include "support/redis_server.h"

namespace staple::testing {
namespace {

class RedisReplicasTest : public GatewayTest {
 protected:
  std::map<std::string, std::string> RedisEnv(const std::string& failure = "closed") {
    return {{"STAPLE_RATELIMIT_STORAGE", redis_.url()},
            {"STAPLE_COMPLETION_LIMIT", "10 per minute"},
            {"STAPLE_RATELIMIT_FAILURE", failure}};
  }

  RedisServer redis_;
};

// 30 requests of one client, alternating between two replicas (each with its own working dir
// and SQLite file), against 10 per minute: exactly 10 pass.
TEST_F(RedisReplicasTest, TwoReplicasEnforceOneExactLimit) {
  auto a = StartStaple(RedisEnv());
  auto b = StartStaple(RedisEnv());
  int passed = 0;
  int limited = 0;
  for (int i = 0; i < 30; ++i) {
    StapleServer& replica = i % 2 == 0 ? *a : *b;
    HttpResponse response = Complete(replica, "request " + std::to_string(i));
    if (response.status == 200) {
      ++passed;
    } else if (response.status == 429) {
      ++limited;
      EXPECT_EQ(response.Header("X-RateLimit-Limit").value_or(""), "10");
    } else {
      ADD_FAILURE() << "request " << i << ": " << response.status << " " << response.body;
    }
  }
  EXPECT_EQ(passed, 10);
  EXPECT_EQ(limited, 20);
  EXPECT_EQ(fake_.requests_to("POST", "/v1/chat/completions").size(), 10u);
}

// Redis down: the closed replica answers 503, the open one admits, both report not ready.
// Redis back on the same port: both serve again.
TEST_F(RedisReplicasTest, OutageAppliesTheFailurePolicyAndRecovers) {
  auto closed = StartStaple(RedisEnv("closed"));
  auto open = StartStaple(RedisEnv("open"));
  EXPECT_EQ(Complete(*closed, "before").status, 200);
  EXPECT_EQ(Complete(*open, "before").status, 200);
  EXPECT_EQ(client_.Get(closed->url() + "/readyz").status, 200);
  EXPECT_EQ(client_.Get(open->url() + "/readyz").status, 200);

  redis_.Stop();
  const auto start = std::chrono::steady_clock::now();
  HttpResponse refused = Complete(*closed, "during");
  EXPECT_EQ(refused.status, 503) << refused.body;
  // Fast, not hanging: the limiter's deadline is 500 ms; the bound leaves room for slow builds.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  HttpResponse admitted = Complete(*open, "during");
  EXPECT_EQ(admitted.status, 200) << admitted.body;
  EXPECT_EQ(client_.Get(closed->url() + "/readyz").status, 503);
  EXPECT_EQ(client_.Get(open->url() + "/readyz").status, 503);

  redis_.Start();
  EXPECT_TRUE(WaitUntil([&] { return Complete(*closed, "after").status == 200; },
                        std::chrono::seconds(10)));
  EXPECT_EQ(Complete(*open, "after").status, 200);
  EXPECT_TRUE(WaitUntil([&] { return client_.Get(closed->url() + "/readyz").status == 200; },
                        std::chrono::seconds(5)));
  EXPECT_EQ(client_.Get(open->url() + "/readyz").status, 200);
}

TEST_F(RedisReplicasTest, InvalidRedisUrlStopsStartupNamingTheVariable) {
  TempDir dir;
  RunResult result = RunStaple({"serve", "--host", "127.0.0.1", "--port", "0"},
                               {{"STAPLE_RATELIMIT_STORAGE", "redis://127.0.0.1:notaport"}},
                               dir.path(), std::chrono::seconds(20));
  ASSERT_TRUE(result.status.has_value()) << "staple did not exit";
  EXPECT_FALSE(result.status->Success());
  const std::string output = result.out + result.err;
  EXPECT_NE(output.find("STAPLE_RATELIMIT_STORAGE"), std::string::npos) << output;
}

}  // namespace
}  // namespace staple::testing
