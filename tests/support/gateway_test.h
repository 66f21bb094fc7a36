#pragma once

// A GoogleTest fixture for tests that drive the real `staple` binary in front of fake_openai,
// plus small checks those tests share.

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "fake_openai.h"
#include "http_client.h"
#include "staple_server.h"

namespace staple::testing {

class GatewayTest : public ::testing::Test {
 protected:
  // Starts staple against fake_ (OPENAI_BASE_URL, OPENAI_API_KEY = kTestApiKey), with `env` on
  // top. Throws (and fails the test) when it does not become ready.
  std::unique_ptr<StapleServer> StartStaple(
      const std::map<std::string, std::string>& env = {},
      std::optional<std::filesystem::path> working_dir = std::nullopt);

  // POST /openai-completion with {"prompt": prompt, "user_id": user_id (when given)}.
  HttpResponse Complete(const StapleServer& staple, const std::string& prompt,
                        const std::optional<std::string>& user_id = std::nullopt,
                        const Headers& headers = {});

  // One turn that must succeed: fails the test unless the answer is 200 with a JSON object
  // holding string `user_id` and `completion`; returns that object (empty on failure).
  nlohmann::json Turn(const StapleServer& staple, const std::string& prompt,
                      const std::optional<std::string>& user_id = std::nullopt);

  // The `messages` of the last chat request the fake received (empty array when none).
  nlohmann::json LastUpstreamMessages() const;

  // The value of metric `name` (with its labels, e.g. `x_total{reason="peer"}`) in the server's
  // /metrics, or -1 when it is not there.
  double Metric(const StapleServer& staple, const std::string& name);

  FakeOpenAI fake_;
  HttpClient client_;
};

// A lower-case RFC 9562 version-7 UUID (8-4-4-4-12 hex digits, version nibble 7, variant 8-b):
// the conversation ids Staple makes (api::NewUserId).
bool IsUuidV7(const std::string& text);

// 'YYYY-MM-DD HH:MM:SS.ffffff'.
bool IsSeedTimestamp(const std::string& text);

// Polls `condition` every 10 ms until it holds or `timeout` passes; returns its last value.
bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

std::vector<std::string> SplitLines(const std::string& text);

// The value of metric `name` (with its labels) in a Prometheus text body, or -1.
double MetricIn(const std::string& text, const std::string& name);

// The `error` member of a JSON error body, or "" when the body is not of that shape.
std::string ErrorMessage(const HttpResponse& response);

}  // namespace staple::testing
