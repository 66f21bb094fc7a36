// Streaming: /v1/chat/completions relays SSE chunk by chunk, /openai-completion streams its own
// events; disconnects, breaks and timeouts.

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

json StreamBody(const std::string& prompt, bool include_usage = false) {
  json body = {{"model", "m"},
               {"stream", true},
               {"messages", json::array({{{"role", "user"}, {"content", prompt}}})}};
  if (include_usage) body["stream_options"] = {{"include_usage", true}};
  return body;
}

// The text of the chunks' choices[0].delta.content, joined.
std::string AssembledContent(const std::vector<std::string>& data) {
  std::string text;
  for (const auto& item : data) {
    json chunk = json::parse(item, nullptr, false);
    if (!chunk.is_object() || !chunk.contains("choices") || chunk["choices"].empty()) continue;
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content") && delta["content"].is_string()) {
      text += delta["content"].get<std::string>();
    }
  }
  return text;
}

class OpenAIStreamTest : public GatewayTest {
 protected:
  StreamResponse ChatStream(const StapleServer& staple, const json& body,
                            const Headers& headers = {},
                            std::optional<std::size_t> abort_after = std::nullopt) {
    Headers all = headers;
    all.emplace_back("Content-Type", "application/json");
    return client_.Stream("POST", staple.url() + "/v1/chat/completions", body.dump(), all,
                          abort_after);
  }
  json StoredMessages(const StapleServer& staple, const std::string& id) {
    HttpResponse response = client_.Get(staple.url() + "/users/" + id + "/messages");
    EXPECT_EQ(response.status, 200) << response.body;
    json body = response.Json();
    return body.is_object() && body.contains("messages") ? body["messages"] : json::array();
  }
  std::unique_ptr<StapleServer> StartStapleFor(const FakeOpenAI& fake,
                                               const std::map<std::string, std::string>& env = {}) {
    StapleOptions options;
    options.env = UpstreamEnv(fake);
    for (const auto& [name, value] : env) options.env[name] = value;
    return std::make_unique<StapleServer>(std::move(options));
  }
};

TEST_F(OpenAIStreamTest, EventsArriveIncrementallyAndEndWithDone) {
  FakeOpenAIOptions slow_options;
  slow_options.chunk_delay_ms = 200;
  slow_options.chunks = 4;
  FakeOpenAI slow(slow_options);
  auto staple = StartStapleFor(slow);

  StreamResponse response =
      ChatStream(*staple, StreamBody("hello world"), {{"X-Staple-Conversation", "streamed"}});
  ASSERT_EQ(response.status, 200) << response.body << response.error;
  EXPECT_NE(response.Header("Content-Type").value_or("").find("text/event-stream"),
            std::string::npos);
  EXPECT_EQ(response.Header("X-Staple-Conversation"), "streamed");
  ASSERT_GE(response.chunks.size(), 3u);
  // Seven events 200 ms apart: the first must arrive long before the last.
  EXPECT_GE(response.chunks.back().time - response.chunks.front().time, milliseconds(700));

  auto data = ParseSseData(response.body);
  ASSERT_FALSE(data.empty());
  EXPECT_EQ(data.back(), "[DONE]");
  EXPECT_EQ(AssembledContent(data), "echo(1): hello world");

  // The turn was stored before "[DONE]" was relayed.
  json stored = StoredMessages(*staple, "streamed");
  ASSERT_EQ(stored.size(), 2u) << stored.dump();
  EXPECT_EQ(stored[0]["content"], "hello world");
  EXPECT_EQ(stored[1]["content"], "echo(1): hello world");
}

TEST_F(OpenAIStreamTest, IncludeUsageIsPassedOn) {
  auto staple = StartStaple();
  auto with_usage = ParseSseData(ChatStream(*staple, StreamBody("hi", true)).body);
  auto without = ParseSseData(ChatStream(*staple, StreamBody("hi", false)).body);
  auto has_usage = [](const std::vector<std::string>& data) {
    for (const auto& item : data) {
      json chunk = json::parse(item, nullptr, false);
      if (chunk.is_object() && chunk.contains("usage") && chunk["usage"].is_object()) return true;
    }
    return false;
  };
  EXPECT_TRUE(has_usage(with_usage));
  EXPECT_FALSE(has_usage(without));
  auto bodies = fake_.chat_bodies();
  ASSERT_EQ(bodies.size(), 2u);
  EXPECT_EQ(bodies[0]["stream_options"], json({{"include_usage", true}}));
  EXPECT_FALSE(bodies[1].contains("stream_options"));
}

TEST_F(OpenAIStreamTest, StreamingUsesTheConversationMemory) {
  auto staple = StartStaple();
  const Headers conversation = {{"X-Staple-Conversation", "mem-stream"}};
  auto first = ParseSseData(ChatStream(*staple, StreamBody("one"), conversation).body);
  EXPECT_EQ(AssembledContent(first), "echo(1): one");
  auto second = ParseSseData(ChatStream(*staple, StreamBody("two"), conversation).body);
  EXPECT_EQ(AssembledContent(second), "echo(3): two");
}

TEST_F(OpenAIStreamTest, ClientDisconnectCancelsTheUpstreamAndLogsNothing) {
  FakeOpenAIOptions slow_options;
  slow_options.chunk_delay_ms = 200;
  slow_options.chunks = 20;
  FakeOpenAI slow(slow_options);
  auto staple = StartStapleFor(slow);

  StreamResponse response =
      ChatStream(*staple, StreamBody("a long enough prompt for twenty chunks"),
                 {{"X-Staple-Conversation", "gone"}, {"X-Request-Id", "gone-stream-1"}}, 1);
  EXPECT_TRUE(response.aborted);
  EXPECT_TRUE(WaitUntil([&] { return slow.stats().value("streams_aborted", 0) >= 1; },
                        std::chrono::seconds(30)))
      << slow.stats().dump();
  EXPECT_EQ(slow.stats().value("streams_completed", 0), 0);
  // The access log line is written once the request's handling is over, after any store write
  // it would have made.
  EXPECT_TRUE(WaitUntil([&] { return staple->Stderr().find("gone-stream-1") != std::string::npos; },
                        std::chrono::seconds(30)))
      << staple->Stderr();
  EXPECT_TRUE(StoredMessages(*staple, "gone").empty());
}

TEST_F(OpenAIStreamTest, ErrorStatusOfAStreamRequestIsAnOrdinaryResponse) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_RETRIES", "0"}});
  StreamResponse response = ChatStream(*staple, StreamBody("FAULT:status=429"));
  EXPECT_EQ(response.status, 429) << response.body;
  EXPECT_NE(response.Header("Content-Type").value_or("").find("application/json"),
            std::string::npos);
  json body = response.Json();
  ASSERT_TRUE(body.is_object() && body.contains("error")) << response.body;
  EXPECT_EQ(body["error"]["message"], "fake failure 429");
}

TEST_F(OpenAIStreamTest, BrokenStreamEndsWithAnErrorEventAndIsNotLogged) {
  auto staple = StartStaple();
  StreamResponse response =
      ChatStream(*staple, StreamBody("one two three four FAULT:stream-drop-after=2"),
                 {{"X-Staple-Conversation", "broken-stream"}});
  ASSERT_EQ(response.status, 200) << response.body;
  auto data = ParseSseData(response.body);
  ASSERT_FALSE(data.empty());
  EXPECT_NE(data.back(), "[DONE]");
  json last = json::parse(data.back(), nullptr, false);
  ASSERT_TRUE(last.is_object() && last.contains("error")) << data.back();
  EXPECT_EQ(last["error"]["type"], "upstream_error");
  EXPECT_TRUE(StoredMessages(*staple, "broken-stream").empty());
}

TEST_F(OpenAIStreamTest, FirstByteTimeoutIs504) {
  auto staple = StartStaple(
      {{"STAPLE_UPSTREAM_RETRIES", "0"}, {"STAPLE_UPSTREAM_FIRST_BYTE_TIMEOUT", "0.5"}});
  StreamResponse response = ChatStream(*staple, StreamBody("FAULT:hang"));
  EXPECT_EQ(response.status, 504) << response.body;
  json body = response.Json();
  ASSERT_TRUE(body.is_object() && body.contains("error")) << response.body;
  EXPECT_EQ(body["error"]["type"], "upstream_timeout");
}

// A hung upstream is asked once (retries are for connect errors, 429 and 5xx): the client waits
// one first-byte timeout, not one per attempt.
TEST_F(OpenAIStreamTest, AHungUpstreamIsAskedOnce) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_FIRST_BYTE_TIMEOUT", "0.5"}});
  StreamResponse response = ChatStream(*staple, StreamBody("FAULT:hang"));
  EXPECT_EQ(response.status, 504) << response.body;
  EXPECT_EQ(fake_.chat_bodies().size(), 1u);
}

// An upstream that answers a stream request with a JSON body (it ignored "stream": true) is a
// broken upstream: 502 in the OpenAI error shape, not a 200 carrying an error event.
TEST_F(OpenAIStreamTest, AnUpstreamAnswerThatIsNotAnEventStreamIs502) {
  auto staple = StartStaple();
  StreamResponse response =
      ChatStream(*staple, StreamBody("FAULT:invalid-json"), {{"X-Staple-Conversation", "not-sse"}});
  EXPECT_EQ(response.status, 502) << response.body;
  EXPECT_NE(response.Header("Content-Type").value_or("").find("application/json"),
            std::string::npos);
  json body = response.Json();
  ASSERT_TRUE(body.is_object() && body.contains("error")) << response.body;
  EXPECT_EQ(body["error"]["type"], "upstream_error");
  EXPECT_TRUE(StoredMessages(*staple, "not-sse").empty());
}

// A stream that keeps coming (never idle) still ends at STAPLE_UPSTREAM_STREAM_TIMEOUT, with an
// error event, and is not stored.
TEST_F(OpenAIStreamTest, TheStreamTimeoutEndsALongStream) {
  FakeOpenAIOptions slow_options;
  slow_options.chunk_delay_ms = 400;
  slow_options.chunks = 20;
  FakeOpenAI slow(slow_options);
  auto staple = StartStapleFor(slow, {{"STAPLE_UPSTREAM_STREAM_TIMEOUT", "1"}});
  StreamResponse response =
      ChatStream(*staple, StreamBody("a rather long answer of many words to come"),
                 {{"X-Staple-Conversation", "long"}});
  ASSERT_EQ(response.status, 200) << response.body;
  auto data = ParseSseData(response.body);
  ASSERT_FALSE(data.empty());
  json last = json::parse(data.back(), nullptr, false);
  ASSERT_TRUE(last.is_object() && last.contains("error")) << data.back();
  EXPECT_EQ(last["error"]["type"], "upstream_timeout");
  EXPECT_NE(last["error"]["message"].get<std::string>().find("stream timeout"), std::string::npos);
  EXPECT_TRUE(StoredMessages(*staple, "long").empty());
}

TEST_F(OpenAIStreamTest, IdleTimeoutEndsTheStreamWithAnErrorEvent) {
  FakeOpenAIOptions slow_options;
  slow_options.chunk_delay_ms = 1500;
  FakeOpenAI slow(slow_options);
  auto staple = StartStapleFor(slow, {{"STAPLE_UPSTREAM_IDLE_TIMEOUT", "0.3"}});
  StreamResponse response =
      ChatStream(*staple, StreamBody("hi"), {{"X-Staple-Conversation", "idle"}});
  ASSERT_EQ(response.status, 200) << response.body;
  auto data = ParseSseData(response.body);
  ASSERT_FALSE(data.empty());
  json last = json::parse(data.back(), nullptr, false);
  ASSERT_TRUE(last.is_object() && last.contains("error")) << data.back();
  EXPECT_EQ(last["error"]["type"], "upstream_timeout");
  EXPECT_TRUE(StoredMessages(*staple, "idle").empty());
}

// ---- the seed endpoint ---------------------------------------------------------------------

class SeedStreamTest : public OpenAIStreamTest {
 protected:
  StreamResponse SeedStream(const StapleServer& staple, const json& body) {
    return client_.Stream("POST", staple.url() + "/openai-completion", body.dump(),
                          {{"Content-Type", "application/json"}});
  }
};

TEST_F(SeedStreamTest, StreamsDeltasThenTheCompletionThenDone) {
  FakeOpenAIOptions slow_options;
  slow_options.chunk_delay_ms = 150;
  slow_options.chunks = 4;
  FakeOpenAI slow(slow_options);
  auto staple = StartStapleFor(slow);

  StreamResponse response = SeedStream(*staple, {{"prompt", "tell me"}, {"stream", true}});
  ASSERT_EQ(response.status, 200) << response.body;
  EXPECT_NE(response.Header("Content-Type").value_or("").find("text/event-stream"),
            std::string::npos);
  EXPECT_GE(response.chunks.back().time - response.chunks.front().time, milliseconds(400));
  auto data = ParseSseData(response.body);
  ASSERT_EQ(data.size(), 6u) << response.body;  // 4 deltas, the completion, [DONE]
  std::string assembled;
  for (std::size_t i = 0; i < 4; ++i) {
    json event = json::parse(data[i]);
    ASSERT_TRUE(event.contains("delta")) << data[i];
    assembled += event["delta"].get<std::string>();
  }
  EXPECT_EQ(assembled, "echo(1): tell me");
  json final_event = json::parse(data[4]);
  EXPECT_EQ(final_event["completion"], "echo(1): tell me");
  const std::string user_id = final_event.value("user_id", "");
  EXPECT_TRUE(IsUuidV7(user_id)) << user_id;
  EXPECT_EQ(data[5], "[DONE]");

  // Committed before the final event went out: visible at once.
  json stored = StoredMessages(*staple, user_id);
  ASSERT_EQ(stored.size(), 2u);
  EXPECT_EQ(stored[1]["content"], "echo(1): tell me");

  // The next streamed turn sees the history.
  auto next = ParseSseData(
      SeedStream(*staple, {{"prompt", "more"}, {"user_id", user_id}, {"stream", true}}).body);
  ASSERT_GE(next.size(), 2u);
  EXPECT_EQ(json::parse(next[next.size() - 2])["completion"], "echo(3): more");
}

TEST_F(SeedStreamTest, StreamMustBeABoolean) {
  auto staple = StartStaple();
  for (const json& value : {json("yes"), json(1), json::array()}) {
    HttpResponse response = client_.PostJson(staple->url() + "/openai-completion",
                                             json{{"prompt", "hi"}, {"stream", value}});
    EXPECT_EQ(response.status, 400) << response.body;
    EXPECT_TRUE(response.Json().contains("error")) << response.body;
  }
  EXPECT_TRUE(fake_.chat_bodies().empty());
}

TEST_F(SeedStreamTest, UpstreamErrorBeforeStreamingIsTheSeeds500) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_RETRIES", "0"}});
  StreamResponse response = SeedStream(*staple, {{"prompt", "FAULT:status=400"}, {"stream", true}});
  EXPECT_EQ(response.status, 500) << response.body;
  EXPECT_EQ(response.Json().value("type", ""), "upstream_error") << response.body;
}

TEST_F(SeedStreamTest, AnUpstreamAnswerThatIsNotAnEventStreamIsTheSeeds500) {
  auto staple = StartStaple();
  StreamResponse response =
      SeedStream(*staple, {{"prompt", "FAULT:invalid-json"}, {"stream", true}});
  EXPECT_EQ(response.status, 500) << response.body;
  EXPECT_EQ(response.Json().value("type", ""), "upstream_error") << response.body;
}

TEST_F(SeedStreamTest, BrokenStreamEndsWithAnErrorEvent) {
  auto staple = StartStaple();
  StreamResponse response =
      SeedStream(*staple, {{"prompt", "one two three FAULT:stream-drop-after=2"},
                           {"user_id", "seed-broken"},
                           {"stream", true}});
  ASSERT_EQ(response.status, 200) << response.body;
  auto data = ParseSseData(response.body);
  ASSERT_FALSE(data.empty());
  json last = json::parse(data.back(), nullptr, false);
  ASSERT_TRUE(last.is_object() && last.contains("error")) << data.back();
  EXPECT_EQ(last.value("type", ""), "upstream_error");
  EXPECT_TRUE(StoredMessages(*staple, "seed-broken").empty());
}

}  // namespace
}  // namespace staple::testing
