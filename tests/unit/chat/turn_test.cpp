#include "chat/turn.h"

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/memory_conversation_store.h"
#include "support/recording_token_gate.h"
#include "support/run_coroutine.h"
#include "support/scripted_upstream.h"

// The turn pipeline's promises, without sockets: a scripted upstream, an in-memory store that can
// fail or stall, a recording token gate.
namespace staple::chat {
namespace {

using testing::MemoryConversationStore;
using testing::RecordingTokenGate;
using testing::ScriptedReply;
using testing::ScriptedUpstream;
using Calls = std::vector<std::string>;

constexpr const char* kAnswer =
    R"({"model":"m-1","choices":[{"index":0,"message":{"role":"assistant","content":"hello"}}],)"
    R"("usage":{"prompt_tokens":7,"completion_tokens":2}})";

std::string Chunk(const std::string& text) {
  return R"(data: {"choices":[{"index":0,"delta":{"content":")" + text + R"("}}]})" + "\n\n";
}
const std::string kFinish =
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const std::string kDone = "data: [DONE]\n\n";

using testing::Settle;
using testing::Start;

class TurnTest : public ::testing::Test {
 protected:
  TurnTest() : pipeline_(store_, upstream_, metrics_, Settings()) {}

  static TurnSettings Settings() {
    TurnSettings settings;
    settings.api_keys = {"sk-secret-key"};
    return settings;
  }

  TurnRequest Request(bool stream = false) {
    TurnRequest request;
    request.conversation_id = "c1";
    request.read_history = true;
    request.prompt = "hi";
    request.model = "asked-model";
    request.request_id = "r1";
    request.stream = stream;
    request.tokens = gate_;
    request.note = &note_;
    return request;
  }

  // A body that lists the history window it was given, so tests can see what was read.
  BodyBuilder Builder() {
    return [this](const TurnRequest& request, const store::History& history, std::size_t first,
                  bool estimate) -> Result<UpstreamBody> {
      built_history_ = history.size() - first;
      UpstreamBody body;
      body.json = R"({"prompt":")" + request.prompt + R"("})";
      if (estimate) body.estimate.prompt = 10;
      return body;
    };
  }

  Result<TurnResult> Complete(TurnRequest request) {
    auto result = Start(io_, pipeline_.Complete(std::move(request), Builder()));
    io_.restart();
    io_.run();
    return std::move(**result);
  }

  // Opens a stream and runs it, recording the pieces and how many turns were stored at each.
  struct Relayed {
    std::vector<TurnStream::Piece> pieces;
    std::vector<std::size_t> stored_at_piece;
    std::optional<Result<ChatAnswer>> result;
    bool error_relayed = false;
  };
  Relayed RunStream(std::size_t client_leaves_after = 1000) {
    auto relayed = std::make_shared<Relayed>();
    auto opened = Start(io_, pipeline_.OpenStream(Request(true), Builder()));
    io_.restart();
    io_.run();
    EXPECT_TRUE(**opened) << (**opened).error().message;
    if (!**opened) return *relayed;
    std::shared_ptr<TurnStream> stream = std::move(**opened).value();
    TurnStream::PieceSink sink =
        [this, relayed, client_leaves_after](TurnStream::Piece piece) -> net::awaitable<Status> {
      if (relayed->pieces.size() >= client_leaves_after) {
        co_return MakeError(ErrorKind::kCancelled, "the client went away");
      }
      relayed->stored_at_piece.push_back(store_.turns().size());
      relayed->pieces.push_back(std::move(piece));
      co_return Ok();
    };
    auto result = Start(io_, stream->Run(std::move(sink)));
    io_.restart();
    io_.run();
    relayed->result = std::move(**result);
    relayed->error_relayed = stream->upstream_error_relayed();
    return *relayed;
  }

  net::io_context io_;
  MemoryConversationStore store_;
  ScriptedUpstream upstream_;
  observe::Metrics metrics_;
  TurnPipeline pipeline_;
  std::shared_ptr<RecordingTokenGate> gate_ = std::make_shared<RecordingTokenGate>();
  std::size_t built_history_ = 0;
  observe::RequestNote note_;
};

TEST_F(TurnTest, AnAnswerIsReturnedOnlyOnceTheStoreConfirmedTheTurn) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  store_.StallAppends();
  auto result = Start(io_, pipeline_.Complete(Request(), Builder()));
  Settle(io_);
  EXPECT_EQ(store_.stalled_calls(), 1u);
  EXPECT_FALSE(result->has_value()) << "answered before the store confirmed";
  EXPECT_TRUE(store_.turns().empty());

  store_.Resume();
  io_.restart();
  io_.run();
  ASSERT_TRUE(result->has_value());
  ASSERT_TRUE(**result) << (**result).error().message;
  ASSERT_TRUE((**result)->answer.has_value());
  EXPECT_EQ((**result)->answer->text, "hello");
  ASSERT_EQ(store_.turns().size(), 1u);
  const auto& turn = store_.turns()[0];
  EXPECT_EQ(turn.user_id, "c1");
  EXPECT_EQ(turn.prompt, "hi");
  EXPECT_EQ(turn.completion, "hello");
  EXPECT_EQ(turn.model, "m-1");  // the model that answered, not the one asked for
  EXPECT_EQ(turn.prompt_tokens, 7);
  EXPECT_EQ(turn.completion_tokens, 2);
  EXPECT_EQ(gate_->calls, (Calls{"reserve", "settle"}));
  EXPECT_EQ(gate_->settled.prompt_tokens, 7);
}

TEST_F(TurnTest, AStoreFailureAnswersTheStorageErrorAndNothingElse) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  store_.FailAppends(MakeError(ErrorKind::kStorage, "disk full"));
  auto result = Complete(Request());
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().kind, ErrorKind::kStorage);
  EXPECT_NE(result.error().message.find("disk full"), std::string::npos);
  EXPECT_TRUE(store_.turns().empty());
  // The upstream did answer: its tokens count.
  EXPECT_EQ(gate_->calls, (Calls{"reserve", "settle"}));
}

TEST_F(TurnTest, WhileStoreWritesFailATurnIsRefusedBeforeAnythingIsAsked) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  store_.MarkWritesFailing("database or disk is full");
  auto result = Complete(Request());
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().kind, ErrorKind::kStorage);
  EXPECT_NE(result.error().message.find("write failing: database or disk is full"),
            std::string::npos)
      << result.error().message;
  EXPECT_TRUE(upstream_.requests().empty()) << "the upstream was asked for an answer nobody gets";
  EXPECT_TRUE(gate_->calls.empty());
  EXPECT_EQ(store_.read_calls(), 0u);
  EXPECT_EQ(store_.append_calls(), 0u);
}

TEST_F(TurnTest, WhileStoreWritesFailAStreamIsRefusedBeforeAnythingIsAsked) {
  store_.MarkWritesFailing("attempt to write a readonly database");
  auto opened = Start(io_, pipeline_.OpenStream(Request(true), Builder()));
  io_.run();
  ASSERT_TRUE(opened->has_value());
  ASSERT_FALSE(**opened);
  EXPECT_EQ((**opened).error().kind, ErrorKind::kStorage);
  EXPECT_TRUE(upstream_.requests().empty());
  EXPECT_TRUE(gate_->calls.empty());
}

TEST_F(TurnTest, TurnsAreAcceptedAgainOnceStoreWritesSucceed) {
  store_.MarkWritesFailing("database or disk is full");
  ASSERT_FALSE(Complete(Request()));
  store_.MarkWritesFailing(std::nullopt);
  upstream_.Push(ScriptedReply::Json(kAnswer));
  auto result = Complete(Request());
  ASSERT_TRUE(result) << result.error().message;
  EXPECT_EQ(upstream_.requests().size(), 1u);
  EXPECT_EQ(store_.turns().size(), 1u);
}

TEST_F(TurnTest, AnUnreadableConversationAsksNothingUpstream) {
  store_.FailReads(MakeError(ErrorKind::kStorage, "database is locked"));
  auto result = Complete(Request());
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().kind, ErrorKind::kStorage);
  EXPECT_TRUE(upstream_.requests().empty());
  EXPECT_TRUE(gate_->calls.empty());
}

TEST_F(TurnTest, WithoutAKeyNothingIsReadOrAsked) {
  TurnSettings settings = Settings();
  settings.key_missing = true;
  TurnPipeline keyless(store_, upstream_, metrics_, settings);
  auto result = Start(io_, keyless.Complete(Request(), Builder()));
  io_.run();
  ASSERT_FALSE(**result);
  EXPECT_EQ((**result).error().kind, ErrorKind::kMisconfigured);
  EXPECT_EQ(store_.read_calls(), 0u);
  EXPECT_TRUE(upstream_.requests().empty());
}

TEST_F(TurnTest, ARefusedReservationNeverReachesTheUpstream) {
  gate_->refuse = true;
  auto result = Complete(Request());
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().kind, ErrorKind::kLimited);
  EXPECT_TRUE(upstream_.requests().empty());
  EXPECT_EQ(gate_->calls, (Calls{"reserve"}));
  EXPECT_EQ(gate_->reserved.prompt, 10u);
}

TEST_F(TurnTest, AnUpstreamErrorStatusReleasesTheTokensAndStoresNothing) {
  upstream_.Push(ScriptedReply::Json(R"({"error":{"message":"bad key sk-secret-key"}})", 401));
  auto result = Complete(Request());
  ASSERT_TRUE(result);
  EXPECT_FALSE(result->answer.has_value());
  EXPECT_EQ(result->response.status, 401);
  EXPECT_EQ(result->response.body.find("sk-secret-key"), std::string::npos);  // scrubbed
  EXPECT_TRUE(store_.turns().empty());
  EXPECT_EQ(gate_->calls, (Calls{"reserve", "release"}));
}

TEST_F(TurnTest, AnUnreachableUpstreamReleasesTheTokens) {
  upstream_.Push(ScriptedReply::Failure(ErrorKind::kUnavailable, "connection refused"));
  auto result = Complete(Request());
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().kind, ErrorKind::kUpstream);
  EXPECT_EQ(gate_->calls, (Calls{"reserve", "release"}));
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(TurnTest, ATimeoutKeepsTheReservation) {
  upstream_.Push(ScriptedReply::Failure(ErrorKind::kTimeout, "upstream timed out"));
  auto result = Complete(Request());
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().kind, ErrorKind::kTimeout);
  // The upstream may have generated tokens that nobody reports.
  EXPECT_EQ(gate_->calls, (Calls{"reserve"}));
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(TurnTest, AnInvalidAnswerIsAnUpstreamErrorAndIsNotStored) {
  upstream_.Push(ScriptedReply::Json("<html>oops</html>"));
  auto result = Complete(Request());
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().kind, ErrorKind::kUpstream);
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(TurnTest, TheHistoryWindowIsReadOnlyForAContinuedConversation) {
  store_.Seed("c1", "q1", "a1");
  store_.Seed("other", "q", "a");
  upstream_.Push(ScriptedReply::Json(kAnswer));
  ASSERT_TRUE(Complete(Request()));
  EXPECT_EQ(built_history_, 2u);

  upstream_.Push(ScriptedReply::Json(kAnswer));
  TurnRequest fresh = Request();
  fresh.read_history = false;
  const auto reads = store_.read_calls();
  ASSERT_TRUE(Complete(std::move(fresh)));
  EXPECT_EQ(store_.read_calls(), reads);
  EXPECT_EQ(built_history_, 0u);
}

TEST_F(TurnTest, AStreamIsCommittedBeforeItsDoneEventIsHandedOn) {
  upstream_.Push(ScriptedReply::Events({Chunk("hel") + Chunk("lo"), kFinish + kDone}));
  auto relayed = RunStream();
  ASSERT_TRUE(relayed.result.has_value());
  ASSERT_TRUE(*relayed.result) << relayed.result->error().message;
  EXPECT_EQ((*relayed.result)->text, "hello");
  ASSERT_EQ(relayed.pieces.size(), 3u);
  EXPECT_EQ(relayed.pieces[0].delta, "hello");
  EXPECT_FALSE(relayed.pieces[0].stored);
  EXPECT_EQ(relayed.pieces[1].bytes, kFinish);
  EXPECT_FALSE(relayed.pieces[1].stored);
  EXPECT_EQ(relayed.pieces[2].bytes, kDone);
  EXPECT_TRUE(relayed.pieces[2].stored);
  EXPECT_EQ(relayed.stored_at_piece, (std::vector<std::size_t>{0, 0, 1}));
  EXPECT_EQ(gate_->calls, (Calls{"reserve", "settle"}));
  EXPECT_EQ(upstream_.finished_streams(), 1u);
}

TEST_F(TurnTest, AStalledStoreHoldsTheDoneEventBack) {
  upstream_.Push(ScriptedReply::Events({Chunk("a"), kDone}));
  store_.StallAppends();
  auto opened = Start(io_, pipeline_.OpenStream(Request(true), Builder()));
  io_.run();
  ASSERT_TRUE(**opened);
  std::shared_ptr<TurnStream> stream = std::move(**opened).value();
  std::vector<TurnStream::Piece> pieces;
  TurnStream::PieceSink sink = [&pieces](TurnStream::Piece piece) -> net::awaitable<Status> {
    pieces.push_back(std::move(piece));
    co_return Ok();
  };
  auto result = Start(io_, stream->Run(std::move(sink)));
  Settle(io_);
  EXPECT_EQ(store_.stalled_calls(), 1u);
  ASSERT_EQ(pieces.size(), 1u);  // the content, not "[DONE]"
  EXPECT_FALSE(pieces[0].stored);

  store_.Resume();
  io_.restart();
  io_.run();
  ASSERT_TRUE(**result);
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_TRUE(pieces[1].stored);
  EXPECT_EQ(pieces[1].bytes, kDone);
}

TEST_F(TurnTest, AStreamWithoutDoneIsStoredAtItsEndWhenItFinished) {
  upstream_.Push(ScriptedReply::Events({Chunk("ok") + kFinish}));
  auto relayed = RunStream();
  ASSERT_TRUE(*relayed.result);
  ASSERT_FALSE(relayed.pieces.empty());
  EXPECT_TRUE(relayed.pieces.back().stored);
  EXPECT_EQ(store_.turns().size(), 1u);
}

TEST_F(TurnTest, AClientThatGoesAwayCancelsTheUpstreamAndStoresNothing) {
  ScriptedReply reply = ScriptedReply::Events({Chunk("a"), Chunk("b")});
  reply.stream_hangs = true;  // the upstream would go on; only the cancellation ends it
  upstream_.Push(std::move(reply));
  auto relayed = RunStream(/*client_leaves_after=*/1);
  ASSERT_FALSE(*relayed.result);
  EXPECT_EQ(relayed.result->error().kind, ErrorKind::kCancelled);
  EXPECT_EQ(upstream_.cancelled_streams(), 1u);
  EXPECT_EQ(store_.append_calls(), 0u);
  EXPECT_EQ(gate_->calls, (Calls{"reserve"}));  // tokens may have been generated
}

TEST_F(TurnTest, ABrokenStreamKeepsTheReservationAndStoresNothing) {
  ScriptedReply reply = ScriptedReply::Events({Chunk("a")});
  reply.stream_error = MakeError(ErrorKind::kUnavailable, "connection reset");
  upstream_.Push(std::move(reply));
  auto relayed = RunStream();
  ASSERT_FALSE(*relayed.result);
  EXPECT_EQ(relayed.result->error().kind, ErrorKind::kUpstream);
  EXPECT_EQ(store_.append_calls(), 0u);
  EXPECT_EQ(gate_->calls, (Calls{"reserve"}));
  EXPECT_FALSE(relayed.error_relayed);
}

TEST_F(TurnTest, AStreamThatEndsEarlyIsAnUpstreamError) {
  upstream_.Push(ScriptedReply::Events({Chunk("a")}));
  auto relayed = RunStream();
  ASSERT_FALSE(*relayed.result);
  EXPECT_EQ(relayed.result->error().kind, ErrorKind::kUpstream);
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(TurnTest, AnUpstreamErrorEventIsHandedOnAndNothingIsStored) {
  const std::string error_event = "data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
  upstream_.Push(ScriptedReply::Events({Chunk("a") + error_event}));
  auto relayed = RunStream();
  ASSERT_FALSE(*relayed.result);
  EXPECT_EQ(relayed.result->error().kind, ErrorKind::kUpstream);
  EXPECT_NE(relayed.result->error().message.find("overloaded"), std::string::npos);
  EXPECT_TRUE(relayed.error_relayed);
  ASSERT_EQ(relayed.pieces.size(), 1u);
  EXPECT_EQ(relayed.pieces[0].bytes, Chunk("a") + error_event);
  EXPECT_TRUE(store_.turns().empty());
}

TEST_F(TurnTest, AStreamErrorStatusReleasesTheTokensAndKeepsTheBody) {
  upstream_.Push(ScriptedReply::Events({R"({"error":{"message":"slow down"}})"}, 429));
  auto opened = Start(io_, pipeline_.OpenStream(Request(true), Builder()));
  io_.run();
  ASSERT_TRUE(**opened);
  std::unique_ptr<TurnStream> stream = std::move(**opened).value();
  EXPECT_FALSE(stream->success());
  EXPECT_EQ(gate_->calls, (Calls{"reserve", "release"}));
  auto body = Start(io_, stream->ReadBody());
  io_.restart();
  io_.run();
  ASSERT_TRUE(**body);
  EXPECT_EQ(***body, R"({"error":{"message":"slow down"}})");
  EXPECT_TRUE(store_.turns().empty());
}

// An upstream that ignores "stream": true and answers a whole JSON completion cannot be relayed
// as the event stream the client asked for: an upstream error (502), the transfer cancelled.
TEST_F(TurnTest, AStreamAnsweredWithoutAnEventStreamIsAnUpstreamError) {
  ScriptedReply reply = ScriptedReply::Events({kAnswer});
  reply.content_type = "application/json";
  reply.stream_hangs = true;
  upstream_.Push(std::move(reply));
  auto opened = Start(io_, pipeline_.OpenStream(Request(true), Builder()));
  io_.run();
  ASSERT_FALSE(**opened);
  EXPECT_EQ((**opened).error().kind, ErrorKind::kUpstream);
  EXPECT_NE((**opened).error().message.find("application/json"), std::string::npos);
  EXPECT_EQ(upstream_.cancelled_streams(), 1u);
  EXPECT_TRUE(store_.turns().empty());
  EXPECT_EQ(gate_->calls, (Calls{"reserve"}));  // an answer may have been generated
}

// Media types compare without case and parameters; a stream without a Content-Type is read.
TEST_F(TurnTest, EventStreamContentTypesWithParametersOrNoneAreRelayed) {
  std::size_t stored = 0;
  for (const char* type : {"text/event-stream; charset=utf-8", "Text/Event-Stream", ""}) {
    ScriptedReply reply = ScriptedReply::Events({Chunk("a"), kDone});
    reply.content_type = type;
    upstream_.Push(std::move(reply));
    auto relayed = RunStream();
    ASSERT_TRUE(relayed.result && *relayed.result) << type;
    EXPECT_EQ(store_.turns().size(), ++stored) << type;
  }
}

TEST_F(TurnTest, StreamRequestsAskForEventsAndCompleteOnesAreBoundByTheTotalTimeout) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  ASSERT_TRUE(Complete(Request()));
  upstream_.Push(ScriptedReply::Events({Chunk("a"), kDone}));
  RunStream();
  ASSERT_EQ(upstream_.requests().size(), 2u);
  EXPECT_TRUE(upstream_.requests()[0].answer_at_once);
  EXPECT_FALSE(upstream_.requests()[1].answer_at_once);
  EXPECT_EQ(upstream_.requests()[1].path, "/chat/completions");
}

TEST(ScrubSecretTest, ReplacesEveryOccurrence) {
  EXPECT_EQ(ScrubSecret("key sk-abc and sk-abc", "sk-abc"), "key *** and ***");
  EXPECT_EQ(ScrubSecret("short", "abc"), "short");  // too short to be a key
}

// TurnRequest::record: what an API stores with the turn is attached before the append (so it is
// in the turn's transaction), sees the whole answer's body, and can refuse the turn.
TEST_F(TurnTest, TheRecordCallbackAttachesItsStateToTheStoredTurn) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  TurnRequest request = Request();
  std::string seen_body;
  ChatAnswer seen_answer;
  request.record = [&seen_body, &seen_answer](store::Turn& turn, std::string_view body,
                                              const ChatAnswer& answer) -> Status {
    seen_body = std::string(body);
    seen_answer = answer;
    auto record = std::make_shared<store::ResponseRecord>();
    record->response.id = "resp_1";
    turn.response = std::move(record);
    turn.completion = "shown as the log's text";
    return Ok();
  };
  auto result = Complete(std::move(request));
  ASSERT_TRUE(result) << result.error().message;
  EXPECT_EQ(seen_body, kAnswer);
  // What the pipeline read of the answer comes with it.
  EXPECT_EQ(seen_answer.text, "hello");
  EXPECT_EQ(seen_answer.model, "m-1");
  EXPECT_EQ(seen_answer.prompt_tokens, 7);
  EXPECT_TRUE(seen_answer.plain_message);
  EXPECT_EQ(seen_answer.finish_reason, "");
  ASSERT_EQ(store_.turns().size(), 1u);
  ASSERT_NE(store_.turns()[0].response, nullptr);
  EXPECT_EQ(store_.turns()[0].response->response.id, "resp_1");
  EXPECT_EQ(store_.turns()[0].completion, "shown as the log's text");
}

TEST_F(TurnTest, ARecordCallbackThatFailsStoresNothing) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  TurnRequest request = Request();
  request.record = [](store::Turn&, std::string_view, const ChatAnswer&) -> Status {
    return MakeError(ErrorKind::kUpstream, "answer unusable for this API");
  };
  auto result = Complete(std::move(request));
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().kind, ErrorKind::kUpstream);
  EXPECT_EQ(result.error().message, "answer unusable for this API");
  EXPECT_EQ(store_.append_calls(), 0u);
}

TEST_F(TurnTest, AStreamsRecordCallbackRunsAfterEveryPieceBeforeTheCommit) {
  upstream_.Push(ScriptedReply::Events({Chunk("he") + Chunk("llo"), kFinish + kDone}));
  auto pieces_seen = std::make_shared<std::size_t>(0);
  auto pieces_at_record = std::make_shared<std::optional<std::size_t>>();
  auto opened = Start(io_, pipeline_.OpenStream(
                               [&] {
                                 TurnRequest request = Request(true);
                                 request.record = [pieces_seen, pieces_at_record](
                                                      store::Turn& turn, std::string_view body,
                                                      const ChatAnswer&) -> Status {
                                   EXPECT_TRUE(body.empty());
                                   *pieces_at_record = *pieces_seen;
                                   turn.completion = "recorded";
                                   return Ok();
                                 };
                                 return request;
                               }(),
                               Builder()));
  io_.restart();
  io_.run();
  ASSERT_TRUE(**opened) << (**opened).error().message;
  std::shared_ptr<TurnStream> stream = std::move(**opened).value();
  TurnStream::PieceSink sink = [pieces_seen](TurnStream::Piece piece) -> net::awaitable<Status> {
    if (!piece.stored) ++*pieces_seen;
    co_return Ok();
  };
  auto result = Start(io_, stream->Run(std::move(sink)));
  io_.restart();
  io_.run();
  ASSERT_TRUE(**result) << (**result).error().message;
  ASSERT_TRUE(pieces_at_record->has_value());
  EXPECT_EQ(**pieces_at_record, *pieces_seen);  // every piece before [DONE] was handed on first
  ASSERT_EQ(store_.turns().size(), 1u);
  EXPECT_EQ(store_.turns()[0].completion, "recorded");
}

TEST_F(TurnTest, TheRequestNoteSaysWhatAnsweredAndWhatItCost) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  ASSERT_TRUE(Complete(Request()));
  EXPECT_EQ(note_.conversation, "c1");
  EXPECT_EQ(note_.model, "asked-model");
  EXPECT_GE(note_.upstream_ms, 0);
  EXPECT_EQ(note_.prompt_tokens, 7);
  EXPECT_EQ(note_.completion_tokens, 2);
  EXPECT_TRUE(note_.failure.empty()) << note_.failure;
}

TEST_F(TurnTest, TheRequestNoteSaysWhyAnUpstreamErrorStatusFailed) {
  upstream_.Push(ScriptedReply::Json(
      R"({"error":{"message":"overloaded, key sk-secret-key","type":"server_error"}})", 503));
  auto result = Complete(Request());
  ASSERT_TRUE(result);
  EXPECT_EQ(note_.failure, "upstream answered 503: overloaded, key ***");
  EXPECT_NE(metrics_.Render().find("staple_upstream_errors_total{kind=\"status\"} 1\n"),
            std::string::npos);
}

TEST_F(TurnTest, TheRequestNoteSaysWhyAStoreFailed) {
  upstream_.Push(ScriptedReply::Json(kAnswer));
  store_.FailAppends(MakeError(ErrorKind::kStorage, "disk full"));
  ASSERT_FALSE(Complete(Request()));
  EXPECT_EQ(note_.failure, "the conversation could not be stored: disk full");
}

TEST_F(TurnTest, TheRequestNoteSaysWhyAStreamBrokeAndItsFirstBytesAreTimed) {
  ScriptedReply reply = ScriptedReply::Events({Chunk("a")});
  reply.stream_error = MakeError(ErrorKind::kUnavailable, "connection reset");
  upstream_.Push(std::move(reply));
  auto relayed = RunStream();
  ASSERT_FALSE(*relayed.result);
  EXPECT_NE(note_.failure.find("connection reset"), std::string::npos) << note_.failure;
  const auto text = metrics_.Render();
  EXPECT_NE(text.find("staple_upstream_errors_total{kind=\"broken_stream\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("staple_upstream_first_token_seconds_count 1\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace staple::chat
