// The context window sent upstream: BuildContext over a stored history, and serializing that
// history into an upstream body, from scratch (a JSON tree, as before MessageFragments) and with
// the serialized messages kept (MessageFragments, what a continued conversation now pays).
//
//   build/staple_micro_bench --benchmark_filter='BuildContext|HistoryBody|WindowStart'

#include <benchmark/benchmark.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat/context_window.h"
#include "chat/message_fragments.h"
#include "store/conversation_store.h"

namespace staple::chat {
namespace {

// `messages` stored messages alternating user/assistant, of chat-typical sizes.
store::History History(std::size_t messages) {
  store::History history;
  history.reserve(messages);
  for (std::size_t i = 0; i < messages; ++i) {
    store::HistoryMessage m;
    m.id = static_cast<std::int64_t>(i + 1);
    const bool user = i % 2 == 0;
    m.role = user ? "user" : "assistant";
    m.content = user ? std::string(120, 'q') : std::string(600, 'a');
    history.push_back(std::make_shared<const store::HistoryMessage>(std::move(m)));
  }
  return history;
}

// range(0): stored messages; range(1): 1 = the default limits (100 messages, 200000 chars),
// 0 = a 10-message window (most of the history is dropped).
void BM_BuildContext(benchmark::State& state) {
  const auto history = History(static_cast<std::size_t>(state.range(0)));
  WindowLimits limits;
  if (state.range(1) == 0) limits.max_messages = 10;
  std::size_t sent = 0;
  for (auto _ : state) {
    auto context =
        BuildContext(history, limits, "You are a helpful assistant.", "What did I ask you before?");
    sent = context.size();
    benchmark::DoNotOptimize(context);
  }
  state.counters["messages_sent"] = static_cast<double>(sent);
}
BENCHMARK(BM_BuildContext)->ArgNames({"stored", "default_limits"})->Args({100, 1})->Args({100, 0});

// WindowStart over 100-message histories of 2 000 conversations in turn (~70 MB of rows, so each
// is cold in the CPU's caches, as in a server holding that many conversations). range(0): 1 = the
// default limits, whose character limit the bytes already meet (no text is read); 0 = a
// character limit one below the bytes, so every message's characters are counted.
void BM_WindowStartColdRows(benchmark::State& state) {
  constexpr std::size_t kConversations = 2000;
  std::vector<store::History> histories;
  histories.reserve(kConversations);
  for (std::size_t i = 0; i < kConversations; ++i) histories.push_back(History(100));
  std::size_t bytes = 0;
  for (const auto& row : histories.front()) bytes += row->content.size();
  WindowLimits limits;
  if (state.range(0) == 0) limits.max_chars = bytes - 1;
  std::size_t next = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(WindowStart(histories[next], limits));
    next = (next + 1) % kConversations;
  }
}
BENCHMARK(BM_WindowStartColdRows)->ArgNames({"default_limits"})->Arg(1)->Arg(0);

// The "messages" array of 100 stored messages as one nlohmann tree, dumped.
void BM_HistoryBodyFromTree(benchmark::State& state) {
  const auto history = History(100);
  for (auto _ : state) {
    nlohmann::json messages = nlohmann::json::array();
    for (const auto& m : history) messages.push_back({{"role", m->role}, {"content", m->content}});
    std::string body = messages.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    benchmark::DoNotOptimize(body);
  }
}
BENCHMARK(BM_HistoryBodyFromTree);

// The same array from kept fragments (every message served from MessageFragments).
void BM_HistoryBodyFromFragments(benchmark::State& state) {
  const auto history = History(100);
  MessageFragments fragments(32 << 20);
  std::string warm;
  fragments.Append(warm, history, 0);
  for (auto _ : state) {
    std::string body = "[";
    fragments.Append(body, history, 0);
    body += ']';
    benchmark::DoNotOptimize(body);
  }
}
BENCHMARK(BM_HistoryBodyFromFragments);

}  // namespace
}  // namespace staple::chat
