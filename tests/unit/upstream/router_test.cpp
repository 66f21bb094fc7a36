#include "upstream/router.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/run_coroutine.h"
#include "support/scripted_upstream.h"

namespace staple::upstream {
namespace {

using testing::ScriptedReply;
using testing::ScriptedUpstream;
using testing::Settle;
using testing::Start;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

const std::string kAnswer = R"({"choices":[{"message":{"content":"hi"}}]})";

UpstreamEntry Entry(std::string name, std::vector<std::string> models, int priority = 0,
                    unsigned weight = 1) {
  UpstreamEntry entry;
  entry.name = std::move(name);
  entry.settings.base_url = "http://" + entry.name + ".invalid/v1";
  entry.models = std::move(models);
  entry.priority = priority;
  entry.weight = weight;
  return entry;
}

Request Ask(std::string model) {
  Request request;
  request.path = "/chat/completions";
  request.model = model;
  request.body = nlohmann::json{{"model", model}, {"messages", nlohmann::json::array()}}.dump();
  return request;
}

class RouterTest : public ::testing::Test {
 protected:
  // A router over `entries`, each answered by a ScriptedUpstream found by name in upstreams_.
  void Build(std::vector<UpstreamEntry> entries, CooldownSettings cooldown = {}) {
    RouterSettings settings;
    settings.upstreams = std::move(entries);
    settings.cooldown = cooldown;
    auto make = [this](const UpstreamEntry& entry) -> std::unique_ptr<Client> {
      auto client = std::make_unique<ScriptedUpstream>();
      upstreams_[entry.name] = client.get();
      return client;
    };
    router_ = std::make_unique<Router>(std::move(settings), make, milliseconds(60'000),
                                       [this] { return now_; });
  }

  Result<Response> Send(Request request) {
    auto result = Start(io_, router_->Send(std::move(request)));
    Settle(io_);
    EXPECT_TRUE(result->has_value()) << "Send did not complete";
    return std::move(**result);
  }

  Result<std::unique_ptr<Stream>> Open(Request request) {
    auto result = Start(io_, router_->OpenStream(std::move(request)));
    Settle(io_);
    EXPECT_TRUE(result->has_value()) << "OpenStream did not complete";
    return std::move(**result);
  }

  // Reads a stream to its end.
  std::string Drain(Stream& stream) {
    std::string body;
    for (;;) {
      auto next = Start(io_, stream.Next());
      Settle(io_);
      if (!next->has_value() || !**next || !(***next)) break;
      body += *(***next);
    }
    return body;
  }

  ScriptedUpstream& Upstream(const std::string& name) { return *upstreams_.at(name); }

  net::io_context io_;
  Clock::time_point now_ = Clock::time_point() + std::chrono::hours(1);
  std::map<std::string, ScriptedUpstream*> upstreams_;
  std::unique_ptr<Router> router_;
};

TEST(GlobMatchTest, MatchesStarsAndQuestionMarks) {
  EXPECT_TRUE(GlobMatch("gpt-4o*", "gpt-4o"));
  EXPECT_TRUE(GlobMatch("gpt-4o*", "gpt-4o-mini"));
  EXPECT_TRUE(GlobMatch("*", ""));
  EXPECT_TRUE(GlobMatch("*mini", "gpt-4o-mini"));
  EXPECT_TRUE(GlobMatch("a*b*c", "aXXbYYc"));
  EXPECT_TRUE(GlobMatch("llama?", "llama3"));
  EXPECT_FALSE(GlobMatch("llama?", "llama"));
  EXPECT_FALSE(GlobMatch("gpt-4o", "gpt-4o-mini"));
  EXPECT_FALSE(GlobMatch("a*b*c", "aXXbYY"));
}

TEST_F(RouterTest, RoutesByExactNameAndGlobAndRefusesUnknownModels) {
  Build({Entry("openai", {"gpt-4o*", "o3"}), Entry("local", {"llama3"})});
  Upstream("openai").Push(ScriptedReply::Json(kAnswer));
  Upstream("local").Push(ScriptedReply::Json(kAnswer));

  auto mini = Send(Ask("gpt-4o-mini"));
  ASSERT_TRUE(mini) << mini.error().message;
  EXPECT_EQ(mini->upstream, "openai");
  auto llama = Send(Ask("llama3"));
  ASSERT_TRUE(llama) << llama.error().message;
  EXPECT_EQ(llama->upstream, "local");

  auto unknown = Send(Ask("claude"));
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().kind, ErrorKind::kNotFound);
  EXPECT_NE(unknown.error().message.find("claude"), std::string::npos);
  EXPECT_EQ(Upstream("openai").requests().size(), 1u);
  EXPECT_EQ(Upstream("local").requests().size(), 1u);

  EXPECT_TRUE(router_->Serves("gpt-4o"));
  EXPECT_FALSE(router_->Serves("gpt-5"));
  EXPECT_EQ(router_->ListedModels(), (std::vector<std::string>{"llama3", "o3"}));
}

TEST_F(RouterTest, RenamesTheModelForThatUpstreamOnly) {
  auto local = Entry("local", {});
  local.rename = {{"llama3", "meta-llama/Llama-3-8B-Instruct"}};
  Build({local, Entry("cloud", {"llama3"}, /*priority=*/1)});
  Upstream("local").Push(ScriptedReply::Json("{}", 503));
  Upstream("cloud").Push(ScriptedReply::Json(kAnswer));

  auto answered = Send(Ask("llama3"));
  ASSERT_TRUE(answered) << answered.error().message;
  EXPECT_EQ(answered->upstream, "cloud");
  const auto& renamed = Upstream("local").requests().at(0);
  EXPECT_EQ(nlohmann::json::parse(renamed.body)["model"], "meta-llama/Llama-3-8B-Instruct");
  EXPECT_EQ(renamed.model, "meta-llama/Llama-3-8B-Instruct");
  EXPECT_EQ(nlohmann::json::parse(Upstream("cloud").requests().at(0).body)["model"], "llama3");
  EXPECT_EQ(router_->ListedModels(), (std::vector<std::string>{"llama3"}));
}

TEST_F(RouterTest, SplitsByWeightWithinAPriority) {
  Build({Entry("heavy", {"m"}, 0, 3), Entry("light", {"m"}, 0, 1), Entry("spare", {"m"}, 1)});
  constexpr int kRequests = 2000;
  for (int i = 0; i < kRequests; ++i) {
    Upstream("heavy").Push(ScriptedReply::Json(kAnswer));
    Upstream("light").Push(ScriptedReply::Json(kAnswer));
  }
  std::map<std::string, int> served;
  for (int i = 0; i < kRequests; ++i) {
    auto answered = Send(Ask("m"));
    ASSERT_TRUE(answered) << answered.error().message;
    ++served[answered->upstream];
  }
  // 75 % expected; the bound is five standard deviations of 2 000 draws.
  const double heavy = served["heavy"] / static_cast<double>(kRequests);
  EXPECT_NEAR(heavy, 0.75, 0.05);
  EXPECT_EQ(served["heavy"] + served["light"], kRequests);
  EXPECT_TRUE(Upstream("spare").requests().empty()) << "a lower priority is only a fallback";
}

TEST_F(RouterTest, FallsBackOnConnectErrors429And5xxButNotOn4xx) {
  Build({Entry("a", {"m"}, 0), Entry("b", {"m"}, 1), Entry("c", {"m"}, 2)});
  Upstream("a").Push(ScriptedReply::Failure(ErrorKind::kUnavailable, "connection refused"));
  Upstream("b").Push(ScriptedReply::Json(R"({"error":{"message":"slow down"}})", 429));
  Upstream("c").Push(ScriptedReply::Json(kAnswer));
  auto answered = Send(Ask("m"));
  ASSERT_TRUE(answered) << answered.error().message;
  EXPECT_EQ(answered->upstream, "c");
  EXPECT_EQ(answered->status, 200);

  // A 400 is the answer to this request, whoever gives it.
  Upstream("a").Push(ScriptedReply::Json(R"({"error":{"message":"bad"}})", 400));
  auto refused = Send(Ask("m"));
  ASSERT_TRUE(refused) << refused.error().message;
  EXPECT_EQ(refused->status, 400);
  EXPECT_EQ(refused->upstream, "a");
  EXPECT_EQ(Upstream("b").requests().size(), 1u);

  // Every candidate failing: the last failure is the answer.
  Upstream("a").Push(ScriptedReply::Json("{}", 500));
  Upstream("b").Push(ScriptedReply::Failure(ErrorKind::kTimeout, "no response"));
  Upstream("c").Push(ScriptedReply::Json(R"({"error":{"message":"down"}})", 503));
  auto failed = Send(Ask("m"));
  ASSERT_TRUE(failed) << failed.error().message;
  EXPECT_EQ(failed->status, 503);
  EXPECT_EQ(failed->upstream, "c");

  Upstream("a").Push(ScriptedReply::Json("{}", 500));
  Upstream("b").Push(ScriptedReply::Json("{}", 502));
  Upstream("c").Push(ScriptedReply::Failure(ErrorKind::kTimeout, "no response"));
  auto timed_out = Send(Ask("m"));
  ASSERT_FALSE(timed_out);
  EXPECT_EQ(timed_out.error().kind, ErrorKind::kTimeout);
  EXPECT_NE(timed_out.error().message.find("(upstream c)"), std::string::npos);
}

TEST_F(RouterTest, PassesTheSharedDeadlineToEveryUpstream) {
  Build({Entry("a", {"m"}, 0), Entry("b", {"m"}, 1)});
  Upstream("a").Push(ScriptedReply::Json("{}", 503));
  Upstream("b").Push(ScriptedReply::Json(kAnswer));
  Request request = Ask("m");
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  request.deadline = deadline;
  ASSERT_TRUE(Send(request));
  ASSERT_TRUE(Upstream("a").requests().at(0).deadline.has_value());
  EXPECT_EQ(*Upstream("a").requests().at(0).deadline, deadline);
  EXPECT_EQ(*Upstream("b").requests().at(0).deadline, deadline);
}

TEST_F(RouterTest, CoolsDownAfterRepeatedFailuresThenOneProbeDecides) {
  CooldownSettings cooldown;
  cooldown.failures = 2;
  cooldown.window = milliseconds(10'000);
  cooldown.period = milliseconds(30'000);
  Build({Entry("flaky", {"m"}, 0), Entry("backup", {"m"}, 1)}, cooldown);
  for (int i = 0; i < 2; ++i) {
    Upstream("flaky").Push(ScriptedReply::Json("{}", 503));
    Upstream("backup").Push(ScriptedReply::Json(kAnswer));
    auto answered = Send(Ask("m"));
    ASSERT_TRUE(answered);
    EXPECT_EQ(answered->upstream, "backup");
  }
  EXPECT_TRUE(router_->Health().at(0).cooling_down);
  EXPECT_EQ(router_->Health().at(0).cooldowns, 1u);

  // Cooling down: skipped, not asked.
  Upstream("backup").Push(ScriptedReply::Json(kAnswer));
  ASSERT_TRUE(Send(Ask("m")));
  EXPECT_EQ(Upstream("flaky").requests().size(), 2u);

  // After the period the next request is its probe; a failed probe starts another period.
  now_ += milliseconds(30'001);
  Upstream("flaky").Push(ScriptedReply::Failure(ErrorKind::kUnavailable, "refused"));
  Upstream("backup").Push(ScriptedReply::Json(kAnswer));
  ASSERT_TRUE(Send(Ask("m")));
  EXPECT_EQ(Upstream("flaky").requests().size(), 3u);
  EXPECT_EQ(router_->Health().at(0).cooldowns, 2u);
  Upstream("backup").Push(ScriptedReply::Json(kAnswer));
  ASSERT_TRUE(Send(Ask("m")));
  EXPECT_EQ(Upstream("flaky").requests().size(), 3u);

  // A successful probe makes it healthy again.
  now_ += milliseconds(30'001);
  Upstream("flaky").Push(ScriptedReply::Json(kAnswer));
  auto probed = Send(Ask("m"));
  ASSERT_TRUE(probed);
  EXPECT_EQ(probed->upstream, "flaky");
  EXPECT_FALSE(router_->Health().at(0).cooling_down);
  Upstream("flaky").Push(ScriptedReply::Json(kAnswer));
  auto healthy = Send(Ask("m"));
  ASSERT_TRUE(healthy);
  EXPECT_EQ(healthy->upstream, "flaky");
}

TEST_F(RouterTest, FailuresOutsideTheWindowDoNotAddUp) {
  CooldownSettings cooldown;
  cooldown.failures = 2;
  cooldown.window = milliseconds(1'000);
  Build({Entry("a", {"m"})}, cooldown);
  Upstream("a").Push(ScriptedReply::Json("{}", 500));
  ASSERT_TRUE(Send(Ask("m")));
  now_ += milliseconds(1'500);
  Upstream("a").Push(ScriptedReply::Json("{}", 500));
  ASSERT_TRUE(Send(Ask("m")));
  EXPECT_FALSE(router_->Health().at(0).cooling_down);
}

TEST_F(RouterTest, AllCandidatesCoolingDownFailsAtOnce) {
  CooldownSettings cooldown;
  cooldown.failures = 1;
  Build({Entry("a", {"m"}), Entry("b", {"m"}), Entry("other", {"x"})}, cooldown);
  Upstream("a").Push(ScriptedReply::Json("{}", 500));
  Upstream("b").Push(ScriptedReply::Json("{}", 500));
  ASSERT_TRUE(Send(Ask("m")));
  auto refused = Send(Ask("m"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, ErrorKind::kOverloaded);
  EXPECT_NE(refused.error().message.find("'m'"), std::string::npos);
  auto streamed = Open(Ask("m"));
  ASSERT_FALSE(streamed);
  EXPECT_EQ(streamed.error().kind, ErrorKind::kOverloaded);
  EXPECT_EQ(Upstream("a").requests().size() + Upstream("b").requests().size(), 2u);

  std::string metrics;
  router_->RenderMetrics(metrics);
  EXPECT_NE(metrics.find("staple_upstream_available{upstream=\"a\"} 0"), std::string::npos);
  EXPECT_NE(metrics.find("staple_upstream_available{upstream=\"other\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("staple_upstream_exchanges_total{upstream=\"b\",outcome=\"failed\"} 1"),
            std::string::npos);
  EXPECT_NE(metrics.find("staple_upstream_cooldowns_total{upstream=\"a\"} 1"), std::string::npos);
}

TEST_F(RouterTest, AStreamFallsBackUntilItsFirstBytesAndNeverAfter) {
  Build({Entry("a", {"m"}, 0), Entry("b", {"m"}, 1), Entry("c", {"m"}, 2)});
  // a: 200, then breaks before any byte; b: 503; c: streams.
  ScriptedReply broken = ScriptedReply::Events({});
  broken.stream_error = MakeError(ErrorKind::kUnavailable, "connection reset");
  Upstream("a").Push(std::move(broken));
  Upstream("b").Push(ScriptedReply::Json("{}", 503));
  Upstream("c").Push(ScriptedReply::Events({"data: one\n\n", "data: two\n\n"}));
  auto opened = Open(Ask("m"));
  ASSERT_TRUE(opened) << opened.error().message;
  EXPECT_EQ((*opened)->upstream(), "c");
  EXPECT_EQ((*opened)->status(), 200);
  EXPECT_EQ(Drain(**opened), "data: one\n\ndata: two\n\n");
  EXPECT_EQ(router_->Health().at(0).failed, 1u);

  // Once the first bytes came, a break is the stream's own failure: no other upstream is asked.
  ScriptedReply cut = ScriptedReply::Events({"data: one\n\n"});
  cut.stream_error = MakeError(ErrorKind::kUnavailable, "connection reset");
  Upstream("a").Push(std::move(cut));
  auto second = Open(Ask("m"));
  ASSERT_TRUE(second);
  EXPECT_EQ((*second)->upstream(), "a");
  auto first = Start(io_, (*second)->Next());
  Settle(io_);
  ASSERT_TRUE(**first);
  auto next = Start(io_, (*second)->Next());
  Settle(io_);
  ASSERT_FALSE(**next);
  EXPECT_EQ(Upstream("b").requests().size(), 1u);
  EXPECT_EQ(Upstream("c").requests().size(), 1u);
}

TEST_F(RouterTest, AStreamWithAnErrorStatusFromEveryUpstreamKeepsTheLastBody) {
  Build({Entry("a", {"m"}, 0), Entry("b", {"m"}, 1)});
  Upstream("a").Push(ScriptedReply::Failure(ErrorKind::kTimeout, "no headers"));
  ScriptedReply overloaded = ScriptedReply::Events({R"({"error":{"message":"overloaded"}})"}, 529);
  Upstream("b").Push(std::move(overloaded));
  auto opened = Open(Ask("m"));
  ASSERT_TRUE(opened) << opened.error().message;
  EXPECT_EQ((*opened)->status(), 529);
  EXPECT_EQ((*opened)->upstream(), "b");
  EXPECT_EQ(Drain(**opened), R"({"error":{"message":"overloaded"}})");
}

TEST_F(RouterTest, AnUpstreamAtItsConcurrencyCapIsSkipped) {
  auto capped = Entry("capped", {"m"}, 0);
  capped.max_concurrent = 1;
  Build({capped, Entry("overflow", {"m"}, 1)});
  Upstream("capped").Push(ScriptedReply::Events({"data: held\n\n"}));
  auto held = Open(Ask("m"));
  ASSERT_TRUE(held);
  EXPECT_EQ((*held)->upstream(), "capped");
  EXPECT_EQ(router_->Health().at(0).in_flight, 1);

  Upstream("overflow").Push(ScriptedReply::Json(kAnswer));
  auto answered = Send(Ask("m"));
  ASSERT_TRUE(answered);
  EXPECT_EQ(answered->upstream, "overflow");

  held->reset();  // the stream ends: its place is free again
  EXPECT_EQ(router_->Health().at(0).in_flight, 0);
  Upstream("capped").Push(ScriptedReply::Json(kAnswer));
  auto again = Send(Ask("m"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->upstream, "capped");
}

// Runs `io` until `done()` holds (or five seconds pass: then the test fails).
template <typename Done>
void RunUntil(net::io_context& io, Done done) {
  const auto give_up = Clock::now() + std::chrono::seconds(5);
  io.restart();
  while (!done() && Clock::now() < give_up) io.run_one_for(milliseconds(50));
  ASSERT_TRUE(done()) << "condition not reached in 5 s";
}

TEST_F(RouterTest, AHedgedStreamGoesToTheSecondCandidateWhenTheFirstIsSilent) {
  auto first = Entry("first", {"m"}, 0);
  first.hedge_after = milliseconds(5);
  Build({first, Entry("second", {"m"}, 1)});
  ScriptedReply silent = ScriptedReply::Events({});
  silent.stream_hangs = true;
  Upstream("first").Push(std::move(silent));
  Upstream("second").Push(ScriptedReply::Events({"data: fast\n\n"}));

  auto opened = Start(io_, router_->OpenStream(Ask("m")));
  RunUntil(io_, [&] { return opened->has_value(); });
  ASSERT_TRUE(**opened) << (**opened).error().message;
  auto& stream = ***opened;
  EXPECT_EQ(stream->upstream(), "second");
  EXPECT_EQ(stream->abandoned_attempts(), 1u);
  EXPECT_EQ(Drain(*stream), "data: fast\n\n");
  // The silent first choice was cancelled, not left running, and is not counted as failing.
  RunUntil(io_, [&] { return Upstream("first").cancelled_streams() == 1; });
  EXPECT_EQ(router_->Health().at(0).failed, 0u);
  EXPECT_EQ(router_->Health().at(0).in_flight, 0);
  std::string metrics;
  router_->RenderMetrics(metrics);
  EXPECT_NE(metrics.find("staple_upstream_hedges_total{upstream=\"first\",won=\"second\"} 1"),
            std::string::npos)
      << metrics;
}

TEST_F(RouterTest, AFastFirstChoiceIsNeverHedged) {
  auto first = Entry("first", {"m"}, 0);
  first.hedge_after = milliseconds(60'000);
  Build({first, Entry("second", {"m"}, 1)});
  Upstream("first").Push(ScriptedReply::Events({"data: quick\n\n"}));
  auto opened = Start(io_, router_->OpenStream(Ask("m")));
  RunUntil(io_, [&] { return opened->has_value(); });
  ASSERT_TRUE(**opened);
  EXPECT_EQ((***opened)->upstream(), "first");
  EXPECT_EQ((***opened)->abandoned_attempts(), 0u);
  EXPECT_TRUE(Upstream("second").requests().empty());
}

TEST_F(RouterTest, WhenTheHedgeFailsTheRaceWaitsForTheFirstChoice) {
  auto first = Entry("first", {"m"}, 0);
  first.hedge_after = milliseconds(5);
  Build({first, Entry("second", {"m"}, 1)});
  // first: headers, then silence until the test releases it; second: fails at once.
  ScriptedReply slow = ScriptedReply::Events({});
  slow.stream_hangs = true;
  Upstream("first").Push(std::move(slow));
  Upstream("second").Push(ScriptedReply::Json("{}", 503));
  auto opened = Start(io_, router_->OpenStream(Ask("m")));
  RunUntil(io_, [&] { return Upstream("second").requests().size() == 1; });
  Settle(io_);
  EXPECT_FALSE(opened->has_value()) << "the first choice is still running";
  // Cancelling the first one (as shutdown would) ends the race with kCancelled.
  ASSERT_TRUE(Upstream("first").requests().at(0).cancellation);
  Upstream("first").requests().at(0).cancellation->Cancel();
  RunUntil(io_, [&] { return opened->has_value(); });
  ASSERT_FALSE(**opened);
  EXPECT_EQ((**opened).error().kind, ErrorKind::kCancelled);
}

}  // namespace
}  // namespace staple::upstream
