#include "chat/stream_transcript.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "chat/sse.h"

namespace staple::chat {
namespace {

TEST(AnswerOfTest, ReadsContentModelAndUsage) {
  auto answer = AnswerOf(
      R"({"model":"m2","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],)"
      R"("usage":{"prompt_tokens":3,"completion_tokens":1}})");
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->text, "hi");
  EXPECT_EQ(answer->model, "m2");
  EXPECT_EQ(answer->prompt_tokens, 3);
  EXPECT_EQ(answer->completion_tokens, 1);
}

TEST(AnswerOfTest, ToolCallsOnlyGiveEmptyText) {
  auto answer = AnswerOf(R"({"choices":[{"message":{"content":null,"tool_calls":[]}}]})");
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->text, "");
  EXPECT_FALSE(answer->prompt_tokens.has_value());
}

TEST(AnswerOfTest, NotJsonIsNoAnswer) {
  EXPECT_FALSE(AnswerOf("<html>").has_value());
  EXPECT_FALSE(AnswerOf("[1]").has_value());
}

TEST(StreamTranscriptTest, AssemblesTheDeltasOfChoiceZero) {
  StreamTranscript transcript;
  EXPECT_EQ(transcript.Add(R"({"model":"m","choices":[{"index":0,"delta":{"role":"assistant",)"
                           R"("content":""}}]})"),
            "");
  EXPECT_EQ(transcript.Add(R"({"choices":[{"index":0,"delta":{"content":"Hel"}}]})"), "Hel");
  EXPECT_EQ(transcript.Add(R"({"choices":[{"index":1,"delta":{"content":"other"}}]})"), "");
  EXPECT_EQ(transcript.Add(R"({"choices":[{"index":0,"delta":{"content":"lo"}}]})"), "lo");
  EXPECT_FALSE(transcript.complete());
  transcript.Add(R"({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})");
  EXPECT_TRUE(transcript.finished());
  transcript.Add(R"({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}})");
  EXPECT_FALSE(transcript.done());
  transcript.Add("[DONE]");
  EXPECT_TRUE(transcript.done());
  EXPECT_TRUE(transcript.complete());
  EXPECT_EQ(transcript.Add(R"({"choices":[{"index":0,"delta":{"content":"late"}}]})"), "");
  EXPECT_EQ(transcript.answer().text, "Hello");
  EXPECT_EQ(transcript.answer().model, "m");
  EXPECT_EQ(transcript.answer().prompt_tokens, 5);
  EXPECT_EQ(transcript.answer().completion_tokens, 2);
}

TEST(StreamTranscriptTest, AnErrorEventMakesItIncomplete) {
  StreamTranscript transcript;
  transcript.Add(R"({"choices":[{"index":0,"delta":{"content":"a"}}]})");
  transcript.Add(R"({"error":{"message":"overloaded","type":"server_error"}})");
  transcript.Add("[DONE]");
  ASSERT_TRUE(transcript.error().has_value());
  EXPECT_EQ(*transcript.error(), "overloaded");
  EXPECT_FALSE(transcript.complete());
}

TEST(StreamTranscriptTest, IgnoresDataThatIsNotJson) {
  StreamTranscript transcript;
  EXPECT_EQ(transcript.Add("garbage"), "");
  EXPECT_FALSE(transcript.error().has_value());
  EXPECT_EQ(transcript.answer().text, "");
}

TEST(StreamTranscriptTest, TurnFromAParsedEventStream) {
  const std::string body =
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"echo(1): \"}}]}\r\n\r\n"
      ": keep-alive\r\n\r\n"
      "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},"
      "\"finish_reason\":\"stop\"}]}\n\n"
      "data: [DONE]\n\n";
  SseParser parser;
  StreamTranscript transcript;
  for (std::size_t i = 0; i < body.size(); i += 7) {
    std::vector<SseEvent> events;
    ASSERT_TRUE(parser.Feed(body.substr(i, 7), events).ok());
    for (const auto& event : events) transcript.Add(event.data);
  }
  EXPECT_TRUE(transcript.complete());
  EXPECT_EQ(transcript.answer().text, "echo(1): hi");
}

}  // namespace
}  // namespace staple::chat
