// Request-body parsing of the seed endpoint: Content-Type check, JSON parse and validation.
//
//   build/staple_micro_bench --benchmark_filter=ParseSeedRequest

#include <benchmark/benchmark.h>

#include <string>

#include "api/handlers.h"
#include "http/message.h"

namespace staple::api {
namespace {

http::Request SeedHttpRequest(std::string body) {
  http::Request request;
  request.method = "POST";
  request.target = "/openai-completion";
  request.path = "/openai-completion";
  request.headers.Add("Host", "127.0.0.1:5000");
  request.headers.Add("User-Agent", "curl/7.88.1");
  request.headers.Add("Accept", "*/*");
  request.headers.Add("Content-Type", "application/json");
  request.headers.Add("Content-Length", std::to_string(body.size()));
  request.body = std::move(body);
  return request;
}

// range(0): 0 = a new conversation (prompt only), 1 = with a user_id, 2 = a 4 KiB prompt.
void BM_ParseSeedRequest(benchmark::State& state) {
  std::string body;
  switch (state.range(0)) {
    case 0:
      body = R"({"prompt": "Hello, who are you? Answer in one sentence."})";
      break;
    case 1:
      body =
          R"({"prompt": "What did I ask you before?", "user_id": "6f1c2d9e-8a4b-4c3d-9e2f-1a2b3c4d5e6f"})";
      break;
    default:
      body = R"({"prompt": ")" + std::string(4096, 'x') + R"(", "user_id": "bench-user-1"})";
      break;
  }
  const http::Request request = SeedHttpRequest(body);
  for (auto _ : state) {
    SeedRequest parsed;
    auto invalid = ParseSeedRequest(request, parsed);
    benchmark::DoNotOptimize(invalid);
    benchmark::DoNotOptimize(parsed);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(body.size()));
}
BENCHMARK(BM_ParseSeedRequest)->ArgName("body")->Arg(0)->Arg(1)->Arg(2);

}  // namespace
}  // namespace staple::api
