#include "fake_openai.h"

#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <stdexcept>
#include <thread>

#include "http_client.h"

namespace staple::testing {
namespace {

constexpr std::string_view kReadyPrefix = "fake_openai listening on http://";

nlohmann::json GetJson(const std::string& url) {
  HttpClient client(std::chrono::seconds(10));
  HttpResponse response = client.Get(url);
  if (response.status != 200) {
    throw std::runtime_error("GET " + url + " failed: " + std::to_string(response.status) + " " +
                             response.error);
  }
  return response.Json();
}

}  // namespace

FakeOpenAI::FakeOpenAI(FakeOpenAIOptions options) : logs_("staple-fake") {
  ProcessOptions process;
  process.executable = BuiltBinary("fake_openai", "FAKE_OPENAI_BIN");
  process.args = {"--host",           "127.0.0.1",
                  "--port",           "0",
                  "--threads",        std::to_string(options.threads),
                  "--latency-ms",     std::to_string(options.latency_ms),
                  "--chunk-delay-ms", std::to_string(options.chunk_delay_ms),
                  "--chunks",         std::to_string(options.chunks)};
  process.args.insert(process.args.end(), options.extra_args.begin(), options.extra_args.end());
  process.output_dir = logs_.path();
  process.name = "fake_openai";
  process_ = std::make_unique<Process>(std::move(process));

  // The fake prints its address once it listens: read the port from there.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string out = process_->Stdout();
    const std::size_t start = out.find(kReadyPrefix);
    const std::size_t end = out.find('\n', start);
    if (start != std::string::npos && end != std::string::npos) {
      const std::string address =
          out.substr(start + kReadyPrefix.size(), end - start - kReadyPrefix.size());
      port_ = static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
      return;
    }
    if (!process_->Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ADD_FAILURE() << "fake_openai did not start ("
                << (process_->Running() ? "timeout" : process_->status()->ToString())
                << "); stderr:\n"
                << process_->Stderr();
  throw std::runtime_error("fake_openai did not start");
}

FakeOpenAI::~FakeOpenAI() {
  if (process_ && process_->Running()) {
    process_->Signal(SIGTERM);
    if (!process_->Wait(std::chrono::seconds(5))) process_->Kill();
  }
}

std::string FakeOpenAI::root_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::string FakeOpenAI::base_url() const { return root_url() + "/v1"; }

nlohmann::json FakeOpenAI::requests() const { return GetJson(root_url() + "/_fake/requests"); }

std::vector<nlohmann::json> FakeOpenAI::requests_to(const std::string& method,
                                                    const std::string& path) const {
  std::vector<nlohmann::json> out;
  for (const auto& request : requests()) {
    if (request.value("method", "") == method && request.value("path", "") == path) {
      out.push_back(request);
    }
  }
  return out;
}

std::vector<nlohmann::json> FakeOpenAI::chat_bodies() const {
  std::vector<nlohmann::json> out;
  for (const auto& request : requests_to("POST", "/v1/chat/completions")) {
    out.push_back(nlohmann::json::parse(request.value("body", ""), nullptr, false));
  }
  return out;
}

void FakeOpenAI::ClearRequests() const {
  HttpClient client(std::chrono::seconds(10));
  HttpResponse response = client.Request("DELETE", root_url() + "/_fake/requests");
  if (response.status != 200) throw std::runtime_error("DELETE /_fake/requests failed");
}

nlohmann::json FakeOpenAI::stats() const { return GetJson(root_url() + "/_fake/stats"); }

}  // namespace staple::testing
