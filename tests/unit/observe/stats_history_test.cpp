#include "observe/stats_history.h"

#include <gtest/gtest.h>

namespace staple::observe {
namespace {

using std::chrono::seconds;

TEST(StatsHistoryTest, PointsAreMinutesOfRequestsErrorsTokensAndPercentiles) {
  Metrics metrics;
  metrics.SetRouteLabels({"other", "/v1/chat/completions", "healthz", "/admin/keys"});
  StatsHistory history(metrics, seconds(60), 60);
  const auto t0 = std::chrono::system_clock::now();
  for (int i = 0; i < 3; ++i) metrics.CountRequest(1, 200, 0.003);
  metrics.CountRequest(1, 503, 2.0);
  metrics.CountRequest(2, 200, 0.0001);  // health checks and the admin API are not traffic
  metrics.CountRequest(3, 200, 0.0001);
  metrics.CountTokens(10, 5);
  history.Tick(t0 + seconds(60));
  metrics.CountRequest(0, 429, 0.001);

  const auto stats = history.ToJson(t0 + seconds(90));
  EXPECT_EQ(stats["interval_seconds"], 60);
  ASSERT_EQ(stats["points"].size(), 2u) << stats.dump();
  const auto& first = stats["points"][0];
  EXPECT_EQ(first["requests"], 4) << first.dump();
  EXPECT_EQ(first["client_errors"], 0);
  EXPECT_EQ(first["server_errors"], 1);
  EXPECT_EQ(first["prompt_tokens"], 10);
  EXPECT_EQ(first["completion_tokens"], 5);
  EXPECT_DOUBLE_EQ(first["p50_ms"].get<double>(), 5);     // 3 ms is in the (2.5, 5] ms bucket
  EXPECT_DOUBLE_EQ(first["p99_ms"].get<double>(), 2500);  // 2 s is in the (1, 2.5] s bucket
  const auto& current = stats["points"][1];               // the unfinished point
  EXPECT_EQ(current["requests"], 1) << current.dump();
  EXPECT_EQ(current["client_errors"], 1);
  EXPECT_NEAR(current["seconds"].get<double>(), 30, 0.1);
}

TEST(StatsHistoryTest, KeepsTheLastPointsOnlyAndEmptyPointsHaveNoPercentiles) {
  Metrics metrics;
  metrics.SetRouteLabels({"other"});
  StatsHistory history(metrics, seconds(60), 2);
  const auto t0 = std::chrono::system_clock::now();
  for (int i = 1; i <= 3; ++i) {
    metrics.CountRequest(0, 200, 0.01);
    history.Tick(t0 + seconds(60 * i));
  }
  const auto stats = history.ToJson(t0 + seconds(200));
  ASSERT_EQ(stats["points"].size(), 3u);  // two finished, one current
  EXPECT_EQ(stats["points"][0]["requests"], 1);
  EXPECT_EQ(stats["points"][2]["requests"], 0);
  EXPECT_TRUE(stats["points"][2]["p50_ms"].is_null());
}

}  // namespace
}  // namespace staple::observe
