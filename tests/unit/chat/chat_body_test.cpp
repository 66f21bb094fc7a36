#include "chat/chat_body.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "chat/token_gate.h"

namespace staple::chat {
namespace {

using nlohmann::ordered_json;

std::vector<std::string> Roles(const ordered_json& messages) {
  std::vector<std::string> roles;
  for (const auto& m : messages) roles.push_back(m.at("role").get<std::string>());
  return roles;
}

TEST(ParseChatBodyTest, AcceptsAnObjectWithMessages) {
  auto parsed =
      ParseChatBody(R"({"model":"m1","stream":true,"temperature":0.25,"messages":[)"
                    R"({"role":"user","content":"first"},{"role":"assistant","content":"a"},)"
                    R"({"role":"user","content":[{"type":"text","text":"se"},{"type":"image_url"},)"
                    R"({"type":"text","text":"cond"}]}]})");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_TRUE(parsed->stream);
  EXPECT_EQ(parsed->model, "m1");
  EXPECT_EQ(parsed->prompt, "second");
}

// The prompt is the text of the last user message, whatever the order of its members and parts.
TEST(ParseChatBodyTest, PromptOfTheLastUserMessageInAnyMemberOrder) {
  auto parsed = ParseChatBody(
      R"({"messages":[{"content":"old","role":"user"},)"
      R"({"content":[{"text":"ne"},{"text":"w","type":"text"},{"type":"text","text":"er"},)"
      R"({"type":"text"},{"type":"image_url","text":"no"},{"type":"text","text":5},"x",[1]],)"
      R"("role":"user","name":{"role":"assistant"}},)"
      R"({"role":"assistant","content":"reply"},7,null,[{"role":"user","content":"nested"}]]})");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->prompt, "wer");
}

TEST(ParseChatBodyTest, ContentThatIsNeitherTextNorPartsGivesAnEmptyPrompt) {
  for (const char* body :
       {R"({"messages":[{"role":"user","content":{"text":"x"}}]})",
        R"({"messages":[{"role":"user","content":null}]})", R"({"messages":[{"role":"user"}]})",
        R"({"messages":[{"role":"user","content":"a","content":3}]})"}) {
    auto parsed = ParseChatBody(body);
    ASSERT_TRUE(parsed.ok()) << body;
    EXPECT_EQ(parsed->prompt, "") << body;
  }
}

TEST(ParseChatBodyTest, TheLastRepeatedMemberCounts) {
  auto parsed =
      ParseChatBody(R"({"model":"a","stream":true,"messages":[{"role":"user","content":"first"}],)"
                    R"("model":"b","stream":false,"messages":[{"role":"user","content":"second"}],)"
                    R"("max_tokens":5,"max_tokens":"x"})");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->model, "b");
  EXPECT_FALSE(parsed->stream);
  EXPECT_EQ(parsed->prompt, "second");
  EXPECT_FALSE(parsed->max_completion_tokens.has_value());

  EXPECT_FALSE(ParseChatBody(R"({"messages":[],"messages":"x"})").ok());
  EXPECT_TRUE(ParseChatBody(R"({"messages":"x","messages":[]})").ok());
}

TEST(ParseChatBodyTest, MembersCountOnlyAtTheTopLevel) {
  auto parsed =
      ParseChatBody(R"({"metadata":{"messages":"x","model":"inner","stream":true,"max_tokens":9},)"
                    R"("messages":[{"role":"user","content":"hi","model":"m2"}]})");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->model, "");
  EXPECT_FALSE(parsed->stream);
  EXPECT_FALSE(parsed->max_completion_tokens.has_value());
  EXPECT_EQ(parsed->prompt, "hi");
  EXPECT_FALSE(ParseChatBody(R"({"metadata":{"messages":[]}})").ok());
}

TEST(ParseChatBodyTest, StreamIsOnlyTrueWhenTheBooleanIsTrue) {
  EXPECT_FALSE(ParseChatBody(R"({"messages":[]})")->stream);
  EXPECT_FALSE(ParseChatBody(R"({"messages":[],"stream":false})")->stream);
  EXPECT_FALSE(ParseChatBody(R"({"messages":[],"stream":"yes"})")->stream);
}

TEST(ParseChatBodyTest, RejectsWhatIsNotAChatRequest) {
  for (const char* body : {"", "not json", "[]", "42", "true", "null", "\"s\"", R"({"model":"m"})",
                           R"({"messages":"hi"})", R"({"messages":{}})", R"({"messages":[]} x)",
                           R"({"messages":[{"role":"user"]})", R"({"messages":[],})"}) {
    auto parsed = ParseChatBody(body);
    ASSERT_FALSE(parsed.ok()) << body;
    EXPECT_EQ(parsed.error().kind, ErrorKind::kInvalidArgument);
    EXPECT_FALSE(parsed.error().message.empty());
  }
}

TEST(ParseChatBodyTest, PromptIsEmptyWithoutAUserMessage) {
  auto parsed = ParseChatBody(R"({"messages":[{"role":"system","content":"s"}]})");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->prompt, "");
}

TEST(ParseChatBodyTest, MaxCompletionTokensTimesChoices) {
  auto none = ParseChatBody(R"({"messages":[]})");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->max_completion_tokens.has_value());

  auto legacy = ParseChatBody(R"({"messages":[],"max_tokens":300})");
  ASSERT_TRUE(legacy.ok());
  EXPECT_EQ(legacy->max_completion_tokens, 300u);

  // max_completion_tokens wins over the deprecated max_tokens; n multiplies.
  auto both = ParseChatBody(R"({"messages":[],"max_tokens":300,"max_completion_tokens":50,"n":3})");
  ASSERT_TRUE(both.ok());
  EXPECT_EQ(both->max_completion_tokens, 150u);

  // Values that are not non-negative integers are the upstream's to reject; no bound is taken.
  for (const char* body :
       {R"({"messages":[],"max_tokens":-1})", R"({"messages":[],"max_tokens":"9"})",
        R"({"messages":[],"max_tokens":2.5})"}) {
    auto odd = ParseChatBody(body);
    ASSERT_TRUE(odd.ok()) << body;
    EXPECT_FALSE(odd->max_completion_tokens.has_value()) << body;
  }
}

TEST(EstimatePromptTokensTest, CountsFramingAndTextQuarters) {
  EXPECT_EQ(EstimateTextTokens(""), 0u);
  EXPECT_EQ(EstimateTextTokens("abcd"), 1u);
  EXPECT_EQ(EstimateTextTokens("abcde"), 2u);
  // 3 to prime the reply, 4 per message, text bytes / 4 rounded up.
  EXPECT_EQ(EstimatePromptTokens(std::vector<ChatMessage>{}), 3u);
  EXPECT_EQ(EstimatePromptTokens(std::vector<ChatMessage>{{"user", "hello"}}), 3u + 4u + 2u);
  auto messages = ordered_json::parse(
      R"([{"role":"system","content":"be brief"},)"
      R"({"role":"user","content":[{"type":"text","text":"abc"},{"type":"image_url"}]}])");
  // Plus one inserted history message.
  EXPECT_EQ(EstimatePromptTokens(messages, {{"assistant", "12345678"}}),
            3u + (4u + 2u) + (4u + 1u) + (4u + 2u));
  EXPECT_EQ(EstimatePromptTokens(ordered_json("not an array")), 3u);
}

TEST(InsertHistoryTest, GoesAfterLeadingSystemMessages) {
  auto messages =
      ordered_json::parse(R"([{"role":"system","content":"s1"},{"role":"developer","content":"d"},)"
                          R"({"role":"user","content":"new"},{"role":"system","content":"late"}])");
  InsertHistory(messages, {{"user", "old q"}, {"assistant", "old a"}});
  EXPECT_EQ(Roles(messages), (std::vector<std::string>{"system", "developer", "user", "assistant",
                                                       "user", "system"}));
  EXPECT_EQ(messages[2]["content"], "old q");
  EXPECT_EQ(messages[3]["content"], "old a");
  EXPECT_EQ(messages[4]["content"], "new");
}

TEST(InsertHistoryTest, GoesFirstWithoutSystemMessages) {
  auto messages = ordered_json::parse(R"([{"role":"user","content":"new"}])");
  InsertHistory(messages, {{"user", "q"}, {"assistant", "a"}});
  EXPECT_EQ(Roles(messages), (std::vector<std::string>{"user", "assistant", "user"}));
  EXPECT_EQ(messages[2]["content"], "new");
}

TEST(InsertHistoryTest, EmptyHistoryChangesNothing) {
  auto messages = ordered_json::parse(R"([{"role":"system","content":"s"}])");
  const auto before = messages;
  InsertHistory(messages, {});
  EXPECT_EQ(messages, before);
  auto only_system = ordered_json::parse(R"([{"role":"system","content":"s"}])");
  InsertHistory(only_system, {{"user", "q"}});
  EXPECT_EQ(Roles(only_system), (std::vector<std::string>{"system", "user"}));
}

}  // namespace
}  // namespace staple::chat
