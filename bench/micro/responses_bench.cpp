// The CPU a /v1/responses request in a previous_response_id chain spends outside the network and
// the database, stage by stage, for a chain of 9 stored responses (18 stored items, what the
// deepest request of bench/run's "chains of 10" row reads).
//
//   build/staple_micro_bench --benchmark_filter='Responses'

#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "chat/context_window.h"
#include "chat/responses.h"

namespace staple::chat::responses {
namespace {

constexpr std::string_view kAnswer =
    R"({"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! I am a fake upstream answering every request the same way."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26}})";
constexpr std::string_view kRequest =
    R"({"model": "gpt-4o-mini", "input": "And then? Answer in one sentence.", "previous_response_id": "resp_2b33ed99849a5f0bb88cdc1d9dd0558e549fdff45abb22d1", "metadata": {"depth": "10"}})";

// The stored items of a chain of `responses` responses, as the store returns them (JSON text).
std::vector<std::string> StoredChain(int responses) {
  std::vector<std::string> items;
  for (int i = 0; i < responses; ++i) {
    ResponsesRequest request;
    if (ParseResponsesRequest(kRequest, request)) std::abort();
    auto output = ReadChatCompletion(kAnswer);
    if (!output) std::abort();
    for (const Json& item : request.input) items.push_back(item.dump());
    for (const Json& item : output->output) items.push_back(item.dump());
  }
  return items;
}

void BM_ResponsesParseRequest(benchmark::State& state) {
  for (auto _ : state) {
    ResponsesRequest request;
    benchmark::DoNotOptimize(ParseResponsesRequest(kRequest, request));
  }
}
BENCHMARK(BM_ResponsesParseRequest);

// Reading the stored items: into JSON trees (as before ReadContextItem), and in one pass.
void BM_ResponsesParseStoredItems(benchmark::State& state) {
  const auto stored = StoredChain(9);
  for (auto _ : state) {
    std::vector<Json> items;
    items.reserve(stored.size());
    for (const auto& text : stored) items.push_back(Json::parse(text, nullptr, false));
    benchmark::DoNotOptimize(items);
  }
}
BENCHMARK(BM_ResponsesParseStoredItems);

void BM_ResponsesReadStoredItems(benchmark::State& state) {
  const auto stored = StoredChain(9);
  for (auto _ : state) {
    std::vector<ContextItem> items;
    items.reserve(stored.size());
    for (const auto& text : stored) {
      if (auto item = ReadContextItem(text)) items.push_back(std::move(*item));
    }
    benchmark::DoNotOptimize(items);
  }
}
BENCHMARK(BM_ResponsesReadStoredItems);

void BM_ResponsesBuildChatBody(benchmark::State& state) {
  const auto stored = StoredChain(9);
  std::vector<ContextItem> items;
  for (const auto& text : stored) items.push_back(*ReadContextItem(text));
  ResponsesRequest request;
  if (ParseResponsesRequest(kRequest, request)) std::abort();
  WindowLimits limits;
  for (auto _ : state) {
    bool fits = true;
    const auto start = ContextStart(items, request.input, limits, fits);
    TokenEstimate estimate;
    std::string body = BuildChatBody(request, items, start, false, estimate);
    benchmark::DoNotOptimize(body);
  }
}
BENCHMARK(BM_ResponsesBuildChatBody);

void BM_ResponsesReadAnswer(benchmark::State& state) {
  ResponsesRequest request;
  if (ParseResponsesRequest(kRequest, request)) std::abort();
  for (auto _ : state) {
    auto output = ReadChatCompletion(kAnswer);
    std::string response = ResponseObject(request, "resp_x", 1700000000, &*output).dump();
    std::vector<std::string> items;
    for (const Json& item : request.input) items.push_back(item.dump());
    for (const Json& item : output->output) items.push_back(item.dump());
    benchmark::DoNotOptimize(response);
    benchmark::DoNotOptimize(items);
  }
}
BENCHMARK(BM_ResponsesReadAnswer);

// The response object the client gets and the store keeps: built as a tree and dumped, against
// written straight as text (what a turn does since ResponseObjectText).
void BM_ResponsesObjectTree(benchmark::State& state) {
  ResponsesRequest request;
  if (ParseResponsesRequest(kRequest, request)) std::abort();
  auto output = ReadChatCompletion(kAnswer);
  for (auto _ : state) {
    std::string response = ResponseObject(request, "resp_x", 1700000000, &*output)
                               .dump(-1, ' ', false, Json::error_handler_t::replace);
    benchmark::DoNotOptimize(response);
  }
}
BENCHMARK(BM_ResponsesObjectTree);

void BM_ResponsesObjectText(benchmark::State& state) {
  ResponsesRequest request;
  if (ParseResponsesRequest(kRequest, request)) std::abort();
  auto output = ReadChatCompletion(kAnswer);
  for (auto _ : state) {
    std::string response = ResponseObjectText(request, "resp_x", 1700000000, &*output);
    benchmark::DoNotOptimize(response);
  }
}
BENCHMARK(BM_ResponsesObjectText);

}  // namespace
}  // namespace staple::chat::responses
