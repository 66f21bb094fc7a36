// SqliteConversationStore append throughput with group commit: `in_flight` AppendTurn calls are
// awaiting at once, so the writer commits many turns per transaction (one fsync each).
//
//   build/staple_micro_bench --benchmark_filter=SqliteAppendTurn
//
// The database lives in a fresh directory under the system temp directory (TMPDIR), so the
// numbers describe that file system's fsync.

#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "common/net.h"
#include "store/conversation_store.h"
#include "store/sqlite/history_cache.h"
#include "store/sqlite/sqlite_conversation_store.h"
#include "store/storable_text.h"

namespace staple::store {
namespace {

std::filesystem::path MakeTempDir() {
  std::string pattern =
      (std::filesystem::temp_directory_path() / "staple-store-bench-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return pattern;
}

// A turn of typical chat size: a short prompt and a few paragraphs of answer.
Turn BenchTurn(std::int64_t n) {
  Turn turn;
  turn.user_id = "bench-user-" + std::to_string(n % 100);
  turn.request_id = "req-" + std::to_string(n);
  turn.model = "gpt-4o-mini";
  turn.prompt = std::string(200, 'p');
  turn.completion = std::string(800, 'c');
  turn.prompt_time = std::chrono::system_clock::now();
  turn.completion_time = turn.prompt_time;
  turn.prompt_tokens = 50;
  turn.completion_tokens = 200;
  turn.latency_ms = 300;
  return turn;
}

net::awaitable<void> AppendOne(ConversationStore* store, std::int64_t n,
                               std::atomic<std::int64_t>* failures) {
  Status appended = co_await store->AppendTurn(BenchTurn(n));
  if (!appended.ok()) failures->fetch_add(1);
}

// Arguments: synchronous (0 = FULL, 1 = NORMAL), appends in flight per iteration.
void BM_SqliteAppendTurn(benchmark::State& state) {
  const std::filesystem::path dir = MakeTempDir();
  SqliteStoreOptions options;
  options.path = (dir / "chat_history.db").string();
  options.synchronous = state.range(0) == 0 ? SqliteSynchronous::kFull : SqliteSynchronous::kNormal;
  auto opened = SqliteConversationStore::Open(options);
  if (!opened.ok()) {
    state.SkipWithError(opened.error().message.c_str());
    return;
  }
  std::unique_ptr<SqliteConversationStore> store = std::move(opened).value();

  const std::int64_t in_flight = state.range(1);
  std::atomic<std::int64_t> failures{0};
  std::int64_t n = 0;
  for (auto _ : state) {
    net::io_context io;
    for (std::int64_t i = 0; i < in_flight; ++i) {
      net::co_spawn(io, AppendOne(store.get(), n++, &failures), [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
    }
    io.run();
  }
  store->Close();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);

  if (failures.load() != 0) state.SkipWithError("some appends failed");
  state.SetItemsProcessed(state.iterations() * in_flight);
  state.counters["turns_per_s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * in_flight), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_SqliteAppendTurn)
    ->ArgNames({"normal", "in_flight"})
    ->Args({0, 1})
    ->Args({0, 64})
    ->Args({0, 1024})
    ->Args({1, 1})
    ->Args({1, 64})
    ->Args({1, 1024})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The UTF-8 check every stored text goes through on the request's thread (MakeStorable): 2 KiB
// of response JSON, ASCII but for one "é" near its end.
//
//   build/staple_micro_bench --benchmark_filter=StorableText
void BM_StorableText(benchmark::State& state) {
  std::string text;
  while (text.size() < 2048) text += R"({"type":"message","role":"assistant","content":"Hello!"},)";
  text += "caf\xC3\xA9";
  for (auto _ : state) benchmark::DoNotOptimize(IsStorableText(text));
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
}
BENCHMARK(BM_StorableText);

// A HistoryCache hit for a 100-message window, as a reader thread serves a continued
// conversation: range(0) = 0 hands out the shared rows (what Get does), 1 also copies them into
// plain rows (what a hit cost when the cache returned copies).
//
//   build/staple_micro_bench --benchmark_filter=HistoryCacheHit
void BM_HistoryCacheHit(benchmark::State& state) {
  HistoryCache cache(256, 64 << 20);
  History rows;
  for (std::int64_t id = 1; id <= 100; ++id) {
    HistoryMessage row;
    row.id = id;
    row.role = id % 2 == 1 ? "user" : "assistant";
    row.content = std::string(id % 2 == 1 ? 60 : 200, 'x');
    rows.push_back(std::make_shared<const HistoryMessage>(std::move(row)));
  }
  cache.Put("conversation", rows, true);
  const bool copy = state.range(0) == 1;
  for (auto _ : state) {
    auto hit = cache.Get("conversation", 1, 100, 100, 100);
    if (copy) {
      std::vector<HistoryMessage> copies;
      copies.reserve(hit->size());
      for (const auto& row : *hit) copies.push_back(*row);
      benchmark::DoNotOptimize(copies);
    }
    benchmark::DoNotOptimize(hit);
  }
}
BENCHMARK(BM_HistoryCacheHit)->ArgNames({"copied"})->Arg(0)->Arg(1);

}  // namespace
}  // namespace staple::store
