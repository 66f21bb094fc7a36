#include "observe/metrics.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <ctime>

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

TEST(MetricsTest, UpstreamErrorsAreCountedByKind) {
  Metrics metrics;
  metrics.CountUpstreamError(UpstreamFailureKind::kTimeout);
  metrics.CountUpstreamError(UpstreamFailureKind::kTimeout);
  metrics.CountUpstreamError(UpstreamFailureKind::kBrokenStream);
  const auto text = metrics.Render();
  EXPECT_TRUE(Contains(text, "staple_upstream_errors_total{kind=\"timeout\"} 2\n")) << text;
  EXPECT_TRUE(Contains(text, "staple_upstream_errors_total{kind=\"broken_stream\"} 1\n")) << text;
  // Every kind is rendered, so a rate over it starts at zero.
  for (const char* kind : {"transport", "status", "invalid_answer", "unavailable"}) {
    EXPECT_TRUE(
        Contains(text, fmt::format("staple_upstream_errors_total{{kind=\"{}\"}} 0\n", kind)))
        << kind;
  }
}

TEST(MetricsTest, LatencyBucketsReachTheUpstreamTimeoutsAndFirstTokensHaveTheirOwn) {
  Metrics metrics;
  metrics.ObserveUpstream(45);  // a slow but normal LLM answer: not in +Inf
  metrics.ObserveFirstToken(0.3);
  const auto text = metrics.Render();
  EXPECT_TRUE(Contains(text, "staple_upstream_duration_seconds_bucket{le=\"30\"} 0\n")) << text;
  EXPECT_TRUE(Contains(text, "staple_upstream_duration_seconds_bucket{le=\"60\"} 1\n")) << text;
  EXPECT_TRUE(Contains(text, "staple_upstream_duration_seconds_bucket{le=\"600\"} 1\n")) << text;
  EXPECT_TRUE(Contains(text, "staple_upstream_first_token_seconds_bucket{le=\"0.25\"} 0\n"))
      << text;
  EXPECT_TRUE(Contains(text, "staple_upstream_first_token_seconds_bucket{le=\"0.5\"} 1\n")) << text;
  EXPECT_TRUE(Contains(text, "staple_upstream_first_token_seconds_count 1\n")) << text;
}

// The value of the unlabelled sample `name` in `text`, or -1.
double Sample(const std::string& text, const std::string& name) {
  const auto at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

TEST(MetricsTest, TheProcessAndTheBuildAreDescribed) {
  Metrics metrics;
  const auto text = metrics.Render();
  EXPECT_TRUE(
      Contains(text, fmt::format("staple_build_info{{version=\"{}\"}} 1\n", BuildVersion())))
      << text;
  EXPECT_STRNE(BuildVersion(), "unknown");
  EXPECT_GT(Sample(text, "process_resident_memory_bytes"), 1024 * 1024);
  EXPECT_GE(Sample(text, "process_virtual_memory_bytes"),
            Sample(text, "process_resident_memory_bytes"));
  EXPECT_GE(Sample(text, "process_cpu_seconds_total"), 0);
  // stdin, stdout and stderr at least; the count leaves out the directory handle it read with.
  const double open_fds = Sample(text, "process_open_fds");
  EXPECT_GE(open_fds, 3);
  int probe = ::dup(2);
  ASSERT_GE(probe, 0);
  EXPECT_EQ(Sample(metrics.Render(), "process_open_fds"), open_fds + 1);
  ::close(probe);
  EXPECT_GT(Sample(text, "process_max_fds"), open_fds);
  const double now = static_cast<double>(std::time(nullptr));
  const double started = Sample(text, "process_start_time_seconds");
  EXPECT_LE(started, now + 1);
  EXPECT_GT(started, now - 24 * 3600);  // this test process started today
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
