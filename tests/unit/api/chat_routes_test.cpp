#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>

#include "api/errors.h"
#include "api/handlers.h"
#include "api/openai_handlers.h"
#include "ratelimit/memory/memory_rate_limiter.h"
#include "support/capturing_body_writer.h"
#include "support/memory_conversation_store.h"
#include "support/scripted_upstream.h"

// The chat routes end to end without sockets: the real router, handlers, adapters and turn
// pipeline over test doubles of the store and the upstream; streamed bodies go to a capturing
// writer. Checks what each API answers for each outcome, and when.
namespace staple::api {
namespace {

using nlohmann::json;
using testing::CapturingBodyWriter;
using testing::MemoryConversationStore;
using testing::ScriptedReply;
using testing::ScriptedUpstream;

constexpr const char* kAnswer =
    R"({"model":"m-1","choices":[{"index":0,"message":{"role":"assistant","content":"hello"}}]})";

std::string Chunk(const std::string& text) {
  return R"(data: {"choices":[{"index":0,"delta":{"content":")" + text + R"("}}]})" + "\n\n";
}
const std::string kDone = "data: [DONE]\n\n";

template <typename T>
net::awaitable<void> Keep(std::shared_ptr<std::optional<T>> out, net::awaitable<T> task) {
  T value = co_await std::move(task);
  out->emplace(std::move(value));
}

net::awaitable<bool> Produce(std::shared_ptr<http::Response> response,
                             std::shared_ptr<CapturingBodyWriter> writer) {
  co_await response->stream(*writer);
  co_return true;
}

class ChatRoutesTest : public ::testing::Test {
 protected:
  ChatRoutesTest()
      : limiter_(clock_, ratelimit::Strategy::kFixedWindow),
        turns_(store_, upstream_, metrics_, TurnSettings()),
        conversations_(turns_, chat::ServiceSettings{"gpt-test", ""}),
        proxy_(turns_, upstream_),
        admission_(limiter_, metrics_, AdmissionSettings{}),
        tokens_(limiter_, metrics_, TokenLimitSettings{}),
        router_(FormatError) {
    RegisterRoutes(
        router_,
        Dependencies{conversations_, store_, limiter_, metrics_, admission_, tokens_, {}, {}});
    RegisterOpenAIRoutes(router_, OpenAIDependencies{proxy_, admission_, tokens_, {}});
  }

  static chat::TurnSettings TurnSettings() {
    chat::TurnSettings settings;
    settings.api_keys = {"sk-test-secret"};
    return settings;
  }

  http::Response Post(const std::string& path, const std::string& body,
                      const std::string& conversation = "", const std::string& method = "POST") {
    auto request = std::make_shared<http::Request>();
    request->method = method;
    request->path = path;
    request->target = path;
    request->headers.Add("Content-Type", "application/json");
    if (!conversation.empty()) request->headers.Add("X-Staple-Conversation", conversation);
    request->body = body;
    request->peer_address = "127.0.0.1";
    request->request_id = "req-1";
    requests_.push_back(request);
    auto out = std::make_shared<std::optional<http::Response>>();
    net::co_spawn(io_, Keep(out, router_.Dispatch(*request)), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io_.restart();
    io_.run();
    return std::move(**out);
  }

  // Runs a streamed response's body into `writer`.
  void Stream(http::Response response, std::shared_ptr<CapturingBodyWriter> writer) {
    ASSERT_TRUE(response.stream) << "not a streamed response: " << response.body;
    auto shared = std::make_shared<http::Response>(std::move(response));
    auto done = std::make_shared<std::optional<bool>>();
    net::co_spawn(io_, Keep(done, Produce(shared, writer)), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io_.restart();
    io_.run();
    EXPECT_TRUE(done->has_value());
  }

  ratelimit::SystemClock clock_;
  ratelimit::MemoryRateLimiter limiter_;
  net::io_context io_;
  MemoryConversationStore store_;
  ScriptedUpstream upstream_;
  observe::Metrics metrics_;
  chat::TurnPipeline turns_;
  chat::ConversationService conversations_;
  chat::OpenAIProxy proxy_;
  Admission admission_;
  TokenLimits tokens_;
  http::Router router_;
  std::vector<std::shared_ptr<http::Request>> requests_;
};

const std::string kSeedBody = R"({"prompt":"hi","user_id":"u1"})";
const std::string kSeedStreamBody = R"({"prompt":"hi","user_id":"u1","stream":true})";
const std::string kChatBody = R"({"model":"m","messages":[{"role":"user","content":"hi"}]})";
const std::string kChatStreamBody =
    R"({"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]})";

TEST_F(ChatRoutesTest, OverlongPathUserIdIsRefusedLikeTheBodys) {
  for (const char* method : {"GET", "DELETE"}) {
    auto response = Post("/users/" + std::string(10'000, 'u') + "/messages", "", "", method);
    EXPECT_EQ(response.status, 400) << method;
    EXPECT_EQ(json::parse(response.body)["error"], "user_id is too long (at most 256 bytes)")
        << method << ": " << response.body;
  }
  auto fits = Post("/users/" + std::string(256, 'u') + "/messages", "", "", "GET");
  EXPECT_EQ(fits.status, 200) << fits.body;
}

TEST_F(ChatRoutesTest, SeedAnswerAfterTheTurnIsStored) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  auto response = Post("/openai-completion", kSeedBody);
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(json::parse(response.body), json({{"user_id", "u1"}, {"completion", "hello"}}));
  ASSERT_EQ(store_.turns().size(), 1u);
  EXPECT_EQ(store_.turns()[0].model, "m-1");
  // The seed body: the configured model and the prompt.
  auto sent = json::parse(upstream_.requests().at(0).body);
  EXPECT_EQ(sent["model"], "gpt-test");
  EXPECT_EQ(sent["messages"].back()["content"], "hi");
}

TEST_F(ChatRoutesTest, SeedStreamWritesItsFinalEventOnlyOnceTheTurnIsStored) {
  upstream_.Push(ScriptedReply::Events({Chunk("hel"), Chunk("lo"), kDone}));
  auto writer = std::make_shared<CapturingBodyWriter>();
  std::optional<std::size_t> stored_at_final;
  writer->before_write = [&](const std::string& data) {
    if (data.find("\"completion\"") != std::string::npos) stored_at_final = store_.turns().size();
  };
  Stream(Post("/openai-completion", kSeedStreamBody), writer);
  ASSERT_TRUE(stored_at_final.has_value());
  EXPECT_EQ(*stored_at_final, 1u);
  EXPECT_EQ(writer->all(),
            "data: {\"delta\":\"hel\"}\n\ndata: {\"delta\":\"lo\"}\n\n"
            "data: {\"completion\":\"hello\",\"user_id\":\"u1\"}\n\ndata: [DONE]\n\n");
}

TEST_F(ChatRoutesTest, ChatStreamRelaysDoneOnlyOnceTheTurnIsStored) {
  upstream_.Push(ScriptedReply::Events({Chunk("a") + Chunk("b"), kDone}));
  auto writer = std::make_shared<CapturingBodyWriter>();
  std::optional<std::size_t> stored_at_done;
  writer->before_write = [&](const std::string& data) {
    if (data.find("[DONE]") != std::string::npos) stored_at_done = store_.turns().size();
  };
  auto response = Post("/v1/chat/completions", kChatStreamBody, "conv-1");
  EXPECT_EQ(response.headers.Get("X-Staple-Conversation"), "conv-1");
  Stream(std::move(response), writer);
  ASSERT_TRUE(stored_at_done.has_value());
  EXPECT_EQ(*stored_at_done, 1u);
  EXPECT_EQ(writer->all(), Chunk("a") + Chunk("b") + kDone);  // byte for byte
  EXPECT_EQ(store_.turns().at(0).completion, "ab");
}

TEST_F(ChatRoutesTest, AStoreFailureIsTheStorageErrorInEachApisShape) {
  store_.FailAppends(MakeError(ErrorKind::kStorage, "disk I/O error"));
  upstream_.Push(ScriptedReply::Json(kAnswer));
  auto seed = Post("/openai-completion", kSeedBody);
  EXPECT_EQ(seed.status, 503);
  EXPECT_EQ(json::parse(seed.body)["type"], "storage_error");
  EXPECT_EQ(seed.body.find("hello"), std::string::npos);  // the answer is not sent

  upstream_.Push(ScriptedReply::Json(kAnswer));
  auto chat = Post("/v1/chat/completions", kChatBody);
  EXPECT_EQ(chat.status, 503);
  EXPECT_EQ(json::parse(chat.body)["error"]["type"], "storage_error");
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(ChatRoutesTest, UpstreamFailuresKeepEachApisStatus) {
  upstream_.Push(ScriptedReply::Failure(ErrorKind::kTimeout, "upstream timed out"));
  auto seed = Post("/openai-completion", kSeedBody);
  EXPECT_EQ(seed.status, 500);  // the seed's contract
  EXPECT_EQ(json::parse(seed.body)["type"], "upstream_timeout");

  upstream_.Push(ScriptedReply::Failure(ErrorKind::kTimeout, "upstream timed out"));
  EXPECT_EQ(Post("/v1/chat/completions", kChatBody).status, 504);

  upstream_.Push(ScriptedReply::Failure(ErrorKind::kUnavailable, "connection refused"));
  auto unreachable = Post("/v1/chat/completions", kChatBody);
  EXPECT_EQ(unreachable.status, 502);
  EXPECT_EQ(json::parse(unreachable.body)["error"]["type"], "upstream_error");

  upstream_.Push(ScriptedReply::Json(R"({"error":{"message":"no such model"}})", 404));
  auto seed_status = Post("/openai-completion", kSeedBody);
  EXPECT_EQ(seed_status.status, 500);
  EXPECT_EQ(json::parse(seed_status.body)["error"], "upstream returned HTTP 404: no such model");

  upstream_.Push(ScriptedReply::Json(R"({"error":{"message":"no such model"}})", 404));
  auto chat_status = Post("/v1/chat/completions", kChatBody);
  EXPECT_EQ(chat_status.status, 404);  // passed through
  EXPECT_EQ(json::parse(chat_status.body)["error"]["message"], "no such model");
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(ChatRoutesTest, ABrokenStreamEndsWithAnErrorEventInEachApisShape) {
  ScriptedReply seed_reply = ScriptedReply::Events({Chunk("a")});
  seed_reply.stream_error = MakeError(ErrorKind::kUnavailable, "connection reset");
  upstream_.Push(std::move(seed_reply));
  auto seed_writer = std::make_shared<CapturingBodyWriter>();
  Stream(Post("/openai-completion", kSeedStreamBody), seed_writer);
  ASSERT_EQ(seed_writer->writes.size(), 2u);
  EXPECT_EQ(seed_writer->writes[1],
            "data: {\"error\":\"connection reset\",\"type\":\"upstream_error\"}\n\n");

  ScriptedReply chat_reply = ScriptedReply::Events({Chunk("a")});
  chat_reply.stream_error = MakeError(ErrorKind::kTimeout, "upstream went idle");
  upstream_.Push(std::move(chat_reply));
  auto chat_writer = std::make_shared<CapturingBodyWriter>();
  Stream(Post("/v1/chat/completions", kChatStreamBody), chat_writer);
  ASSERT_EQ(chat_writer->writes.size(), 2u);
  auto event = json::parse(chat_writer->writes[1].substr(6));
  EXPECT_EQ(event["error"]["type"], "upstream_timeout");
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(ChatRoutesTest, TheUpstreamsOwnErrorEventIsRelayedWithoutASecondOne) {
  const std::string error_event = "data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
  upstream_.Push(ScriptedReply::Events({Chunk("a"), error_event}));
  auto writer = std::make_shared<CapturingBodyWriter>();
  Stream(Post("/v1/chat/completions", kChatStreamBody), writer);
  EXPECT_EQ(writer->all(), Chunk("a") + error_event);
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(ChatRoutesTest, AClientThatLeavesMidStreamCancelsTheUpstreamAndStoresNothing) {
  ScriptedReply reply = ScriptedReply::Events({Chunk("a"), Chunk("b"), kDone});
  upstream_.Push(std::move(reply));
  auto writer = std::make_shared<CapturingBodyWriter>();
  writer->fail_after = 1;
  Stream(Post("/openai-completion", kSeedStreamBody), writer);
  EXPECT_EQ(writer->writes.size(), 1u);
  EXPECT_EQ(upstream_.cancelled_streams(), 1u);
  EXPECT_EQ(store_.append_calls(), 0u);
}

TEST_F(ChatRoutesTest, WithoutAKeyBothRoutesSayItIsAConfigurationError) {
  chat::TurnSettings settings = TurnSettings();
  settings.key_missing = true;
  chat::TurnPipeline keyless(store_, upstream_, metrics_, settings);
  chat::ConversationService conversations(keyless, chat::ServiceSettings{});
  chat::OpenAIProxy proxy(keyless, upstream_);
  http::Router router(FormatError);
  RegisterRoutes(
      router, Dependencies{conversations, store_, limiter_, metrics_, admission_, tokens_, {}, {}});
  RegisterOpenAIRoutes(router, OpenAIDependencies{proxy, admission_, tokens_, {}});
  router_ = std::move(router);
  auto seed = Post("/openai-completion", kSeedBody);
  EXPECT_EQ(seed.status, 500);
  EXPECT_EQ(json::parse(seed.body)["type"], "configuration_error");
  auto chat = Post("/v1/chat/completions", kChatBody);
  EXPECT_EQ(chat.status, 500);
  EXPECT_EQ(json::parse(chat.body)["error"]["type"], "configuration_error");
  EXPECT_EQ(chat.headers.Get("X-Should-Retry").value_or(""), "false");
  EXPECT_EQ(seed.headers.Get("X-Should-Retry").value_or(""), "false");
  EXPECT_TRUE(upstream_.requests().empty());
}

TEST(FailureTableTest, EveryKindHasAStatusInEveryStyle) {
  for (auto kind :
       {ErrorKind::kInvalidArgument, ErrorKind::kNotFound, ErrorKind::kUnavailable,
        ErrorKind::kStorage, ErrorKind::kTimeout, ErrorKind::kUpstream, ErrorKind::kCancelled,
        ErrorKind::kLimited, ErrorKind::kMisconfigured, ErrorKind::kInternal}) {
    for (auto style : {ErrorStyle::kSeed, ErrorStyle::kOpenAI}) {
      const auto shape = ShapeOf(kind, style);
      EXPECT_GE(shape.status, 400) << ErrorKindName(kind);
      EXPECT_LE(shape.status, 599) << ErrorKindName(kind);
      if (style == ErrorStyle::kOpenAI) {
        EXPECT_STRNE(shape.type, "") << ErrorKindName(kind);
      }
    }
  }
  EXPECT_EQ(ShapeOf(ErrorKind::kStorage, ErrorStyle::kSeed).status, 503);
  EXPECT_EQ(ShapeOf(ErrorKind::kUpstream, ErrorStyle::kSeed).status, 500);
  EXPECT_EQ(ShapeOf(ErrorKind::kUpstream, ErrorStyle::kOpenAI).status, 502);
  EXPECT_EQ(FailureEvent(MakeError(ErrorKind::kStorage, "x"), ErrorStyle::kSeed),
            "data: {\"error\":\"x\",\"type\":\"storage_error\"}\n\n");
}

}  // namespace
}  // namespace staple::api
