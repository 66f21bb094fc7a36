#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "process.h"
#include "temp_dir.h"

namespace staple::testing {

struct FakeOpenAIOptions {
  int threads = 1;
  int latency_ms = 0;
  int chunk_delay_ms = 0;
  int chunks = 4;
  std::vector<std::string> extra_args;
};

// tools/fake_openai (BuiltBinary("fake_openai", "FAKE_OPENAI_BIN")) running on a free port of
// 127.0.0.1 for the lifetime of the object. The constructor returns once the fake listens; it
// throws (after recording a test failure with the fake's stderr) when it does not start within 10
// s.
class FakeOpenAI {
 public:
  explicit FakeOpenAI(FakeOpenAIOptions options = {});
  ~FakeOpenAI();
  FakeOpenAI(const FakeOpenAI&) = delete;
  FakeOpenAI& operator=(const FakeOpenAI&) = delete;

  std::uint16_t port() const { return port_; }
  // http://127.0.0.1:PORT/v1 — what OPENAI_BASE_URL should be.
  std::string base_url() const;
  // http://127.0.0.1:PORT
  std::string root_url() const;

  // GET /_fake/requests: the recorded /v1/* requests, oldest first.
  nlohmann::json requests() const;
  // The recorded requests with this method and path (e.g. "POST", "/v1/chat/completions").
  std::vector<nlohmann::json> requests_to(const std::string& method, const std::string& path) const;
  // The parsed JSON bodies of the recorded POST /v1/chat/completions requests.
  std::vector<nlohmann::json> chat_bodies() const;
  // DELETE /_fake/requests.
  void ClearRequests() const;
  // GET /_fake/stats.
  nlohmann::json stats() const;

  Process& process() { return *process_; }

 private:
  TempDir logs_;
  std::unique_ptr<Process> process_;
  std::uint16_t port_ = 0;
};

}  // namespace staple::testing
