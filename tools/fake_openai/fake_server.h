#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace staple::fake {

struct ServerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;                    // 0 picks a free port
  int threads = 1;                           // one io_context per thread
  std::chrono::milliseconds latency{0};      // added before every /v1/* answer
  std::chrono::milliseconds chunk_delay{0};  // between two SSE events
  int chunks = 4;                            // content chunks per streamed reply
  std::size_t record = 200;                  // requests kept for GET /_fake/requests (0 = none)
};

// Binds, prints "fake_openai listening on http://HOST:PORT" to stdout (flushed), and serves until
// SIGINT or SIGTERM. Returns the process exit code (0 after a signal). Throws std::exception when
// the address cannot be bound.
int RunServer(const ServerOptions& options);

}  // namespace staple::fake
