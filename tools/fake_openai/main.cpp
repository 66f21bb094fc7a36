// fake_openai: an OpenAI-compatible fake upstream for Staple's tests, demos and benchmarks.
// The behaviour (echo replies, tool calls, fault markers, /_fake endpoints) is described in
// fake_logic.h.

#include <CLI/CLI.hpp>
#include <chrono>
#include <exception>
#include <iostream>

#include "fake_server.h"

int main(int argc, char** argv) {
  staple::fake::ServerOptions options;
  int port = 0;
  int latency_ms = 0;
  int chunk_delay_ms = 0;

  CLI::App app{"OpenAI-compatible fake upstream: deterministic echo replies and fault injection"};
  app.add_option("--host", options.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", port, "Port to listen on (0 picks a free one)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app.add_option("--threads", options.threads, "I/O threads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--latency-ms", latency_ms, "Delay added before every /v1/* answer")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--chunk-delay-ms", chunk_delay_ms, "Delay between two streamed events")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--chunks", options.chunks, "Content chunks per streamed reply")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--record", options.record,
                 "Requests kept for GET /_fake/requests (0 disables recording)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  options.port = static_cast<std::uint16_t>(port);
  options.latency = std::chrono::milliseconds(latency_ms);
  options.chunk_delay = std::chrono::milliseconds(chunk_delay_ms);
  try {
    return staple::fake::RunServer(options);
  } catch (const std::exception& e) {
    std::cerr << "fake_openai: " << e.what() << std::endl;
    return 1;
  }
}
