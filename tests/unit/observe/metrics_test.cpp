#include "observe/metrics.h"

#include <gtest/gtest.h>

#include "observe/log.h"

namespace staple::observe {
namespace {

bool Contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

TEST(MetricsTest, RequestsAreRenderedUnderTheDeclaredRouteLabels) {
  Metrics metrics;
  metrics.SetRouteLabels({"other", "/v1/models", "healthz"});
  metrics.CountRequest(1, 200, 0.002);
  metrics.CountRequest(1, 200, 0.002);
  metrics.CountRequest(0, 404, 0.001);
  const auto text = metrics.Render();
  EXPECT_TRUE(Contains(text, "staple_http_requests_total{route=\"/v1/models\",status=\"200\"} 2\n"))
      << text;
  EXPECT_TRUE(Contains(text, "staple_http_requests_total{route=\"other\",status=\"404\"} 1\n"))
      << text;
  EXPECT_FALSE(Contains(text, "route=\"healthz\",status=")) << text;
  // Every declared route has its latency histogram, used or not.
  EXPECT_TRUE(
      Contains(text, "staple_http_request_duration_seconds_count{route=\"/v1/models\"} 2\n"))
      << text;
  EXPECT_TRUE(Contains(text, "staple_http_request_duration_seconds_count{route=\"healthz\"} 0\n"))
      << text;
}

TEST(MetricsTest, UndeclaredRouteIndexesAreNotCounted) {
  Metrics metrics;
  metrics.CountRequest(0, 200, 0.001);  // no labels yet
  metrics.SetRouteLabels({"other"});
  metrics.CountRequest(5, 200, 0.001);
  metrics.CountRequest(0, 700, 0.001);  // out-of-range status: counted as status 0
  const auto text = metrics.Render();
  EXPECT_TRUE(Contains(text, "staple_http_requests_total{route=\"other\",status=\"0\"} 1\n"))
      << text;
  EXPECT_TRUE(Contains(text, "staple_http_request_duration_seconds_count{route=\"other\"} 1\n"))
      << text;
}

TEST(MetricsTest, HandlerExceptionsAreCounted) {
  Metrics metrics;
  EXPECT_TRUE(Contains(metrics.Render(), "\nstaple_handler_exceptions_total 0\n"));
  metrics.CountHandlerException();
  metrics.CountHandlerException();
  EXPECT_TRUE(Contains(metrics.Render(), "\nstaple_handler_exceptions_total 2\n"));
}

TEST(LogTest, LoggingCanBeInitialisedAgain) {
  InitLogging(LogFormat::kText);
  EXPECT_NO_THROW(InitLogging(LogFormat::kJson));
  ::testing::internal::CaptureStderr();
  Info("hello", {{"key", "value"}});
  const auto line = ::testing::internal::GetCapturedStderr();
  const auto json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(json.is_object()) << line;
  EXPECT_EQ(json.value("msg", ""), "hello");
  EXPECT_EQ(json.value("key", ""), "value");
}

}  // namespace
}  // namespace staple::observe
