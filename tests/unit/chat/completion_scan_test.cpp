#include "chat/completion_scan.h"

#include <gtest/gtest.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <string>

namespace staple::chat {
namespace {

using Content = CompletionFields::Content;

TEST(ScanCompletionTest, ReadsACompletion) {
  auto fields =
      ScanCompletion(R"({"id":"c1","object":"chat.completion","model":"gpt-x","choices":[)"
                     R"({"index":0,"message":{"role":"assistant","content":"Hi \"there\"\n"},)"
                     R"("finish_reason":"stop"},{"index":1,"message":{"content":"second"}}],)"
                     R"("usage":{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26}})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_EQ(fields->model, "gpt-x");
  EXPECT_TRUE(fields->has_first_choice);
  EXPECT_EQ(fields->index, 0);
  EXPECT_TRUE(fields->finish_reason);
  EXPECT_EQ(fields->message_content, Content::kString);
  EXPECT_EQ(fields->message_text, "Hi \"there\"\n");
  EXPECT_EQ(fields->prompt_tokens, 12);
  EXPECT_EQ(fields->completion_tokens, 14);
  EXPECT_FALSE(fields->delta_text.has_value());
  EXPECT_FALSE(fields->error);
}

TEST(ScanCompletionTest, ReadsAChunk) {
  auto fields = ScanCompletion(
      R"({"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"pi"},)"
      R"("finish_reason":null}],"usage":null})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_EQ(fields->delta_text, "pi");
  EXPECT_FALSE(fields->finish_reason);
  EXPECT_EQ(fields->message_content, Content::kAbsent);
  EXPECT_FALSE(fields->prompt_tokens.has_value());
}

TEST(ScanCompletionTest, ContentKinds) {
  EXPECT_EQ(ScanCompletion(R"({"choices":[{"message":{"content":null,"tool_calls":[]}}]})")
                ->message_content,
            Content::kNull);
  EXPECT_EQ(
      ScanCompletion(R"({"choices":[{"message":{"content":[{"text":"x"}]}}]})")->message_content,
      Content::kOther);
  EXPECT_EQ(ScanCompletion(R"({"choices":[{"message":{"role":"assistant"}}]})")->message_content,
            Content::kAbsent);
  // A message that is not an object has no content.
  EXPECT_EQ(ScanCompletion(R"({"choices":[{"message":"hi"}]})")->message_content, Content::kAbsent);
}

// What the Responses API needs to tell a plain text answer from one with tool calls or a refusal.
TEST(ScanCompletionTest, FinishReasonToolCallsAndRefusal) {
  auto fields = ScanCompletion(
      R"({"choices":[{"finish_reason":"tool_calls","message":{"content":null,)"
      R"("tool_calls":[{"id":"c","function":{"name":"f","arguments":"{}"}}],"refusal":"no"}}]})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_EQ(fields->finish_reason_text, "tool_calls");
  EXPECT_TRUE(fields->has_message);
  EXPECT_TRUE(fields->message_tool_calls);
  EXPECT_TRUE(fields->message_refusal);

  // null counts as absent, and the last of a repeated member counts.
  fields = ScanCompletion(
      R"({"choices":[{"finish_reason":"stop","finish_reason":5,"message":{"content":"hi",)"
      R"("tool_calls":[],"tool_calls":null,"refusal":null}}]})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_TRUE(fields->finish_reason);
  EXPECT_EQ(fields->finish_reason_text, "");
  EXPECT_TRUE(fields->has_message);
  EXPECT_FALSE(fields->message_tool_calls);
  EXPECT_FALSE(fields->message_refusal);

  // A message that is not an object, or a later message, forgets what an earlier one had.
  fields = ScanCompletion(R"({"choices":[{"message":{"refusal":"r"},"message":"text"}]})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_FALSE(fields->has_message);
  EXPECT_FALSE(fields->message_refusal);
  fields = ScanCompletion(R"({"choices":[{"message":{"tool_calls":[]},"message":{}}]})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_TRUE(fields->has_message);
  EXPECT_FALSE(fields->message_tool_calls);
}

TEST(ScanCompletionTest, OnlyTheFirstChoiceCounts) {
  auto fields =
      ScanCompletion(R"({"choices":[{"index":0,"delta":{}},{"index":1,"delta":{"content":"other"},)"
                     R"("finish_reason":"stop"}]})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_TRUE(fields->has_first_choice);
  EXPECT_FALSE(fields->delta_text.has_value());
  EXPECT_FALSE(fields->finish_reason);

  auto not_object = ScanCompletion(R"({"choices":[5,{"message":{"content":"x"}}]})");
  ASSERT_TRUE(not_object.has_value());
  EXPECT_FALSE(not_object->has_first_choice);
  EXPECT_EQ(not_object->message_content, Content::kAbsent);

  auto choices_object = ScanCompletion(R"({"choices":{"0":{"message":{"content":"x"}}}})");
  ASSERT_TRUE(choices_object.has_value());
  EXPECT_FALSE(choices_object->has_first_choice);
}

TEST(ScanCompletionTest, NestedLookalikesAreIgnored) {
  // "model", "usage" and "choices" count only at the top level.
  auto fields = ScanCompletion(
      R"({"meta":{"model":"inner","usage":{"prompt_tokens":1}},"x":[{"model":"y"}],)"
      R"("choices":[{"message":{"content":"ok","meta":{"content":"no"}}}],"model":"outer"})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_EQ(fields->model, "outer");
  EXPECT_FALSE(fields->prompt_tokens.has_value());
  EXPECT_EQ(fields->message_text, "ok");
}

TEST(ScanCompletionTest, ErrorEvents) {
  auto object = ScanCompletion(R"({"error":{"message":"overloaded","type":"server_error"}})");
  ASSERT_TRUE(object.has_value());
  EXPECT_TRUE(object->error);
  EXPECT_EQ(object->error_text, "overloaded");

  auto text = ScanCompletion(R"({"error":"bad"})");
  EXPECT_TRUE(text->error);
  EXPECT_EQ(text->error_text, "bad");

  auto without_message = ScanCompletion(R"({"error":{"code":5}})");
  EXPECT_TRUE(without_message->error);
  EXPECT_EQ(without_message->error_text, "");

  EXPECT_FALSE(ScanCompletion(R"({"error":null,"choices":[]})")->error);
}

TEST(ScanCompletionTest, TheLastRepeatedMemberCounts) {
  auto fields = ScanCompletion(
      R"({"model":"a","model":"b","usage":{"prompt_tokens":3},"usage":{"completion_tokens":4},)"
      R"("choices":[{"message":{"content":"old"}}],"choices":[{"delta":{"content":"new"}}]})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_EQ(fields->model, "b");
  EXPECT_FALSE(fields->prompt_tokens.has_value());
  EXPECT_EQ(fields->completion_tokens, 4);
  EXPECT_EQ(fields->message_content, Content::kAbsent);
  EXPECT_EQ(fields->delta_text, "new");
}

TEST(ScanCompletionTest, NumbersOnlyCountWhenIntegers) {
  auto fields = ScanCompletion(
      R"({"usage":{"prompt_tokens":1.5,"completion_tokens":"7"},"choices":[{"index":-1}]})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_FALSE(fields->prompt_tokens.has_value());
  EXPECT_FALSE(fields->completion_tokens.has_value());
  EXPECT_EQ(fields->index, -1);
}

TEST(ScanCompletionTest, RejectsWhatIsNotAJsonObject) {
  for (const char* body :
       {"", "<html>", "[1]", "42", "\"text\"", "null", R"({"choices":[{"message":{"content":"cut)",
        R"({"a":1} trailing)", R"({"a":1,})"}) {
    EXPECT_FALSE(ScanCompletion(body).has_value()) << body;
  }
}

// The scan agrees with a parsed tree on deeply nested and oddly shaped bodies.
TEST(ScanCompletionTest, AgreesWithAParsedTree) {
  const char* bodies[] = {
      R"({"choices":[{"message":{"content":"a","x":[[[{"content":"b"}]]]}}],"model":"m"})",
      R"({"choices":[[{"message":{"content":"inner"}}],{"message":{"content":"b"}}]})",
      R"({"choices":[{"message":{"content":"é ☃ \u00e9"}}],"usage":{"prompt_tokens":18446744073}})",
      R"({"choices":[],"model":5,"usage":[1,2]})",
  };
  for (const char* body : bodies) {
    auto tree = nlohmann::json::parse(body);
    auto fields = ScanCompletion(body);
    ASSERT_TRUE(fields.has_value()) << body;
    const auto& choices = tree["choices"];
    const bool first_is_object = !choices.empty() && choices[0].is_object();
    EXPECT_EQ(fields->has_first_choice, first_is_object) << body;
    std::string text;
    if (first_is_object && choices[0].contains("message") &&
        choices[0]["message"]["content"].is_string()) {
      text = choices[0]["message"]["content"].get<std::string>();
    }
    EXPECT_EQ(fields->message_text, text) << body;
    EXPECT_EQ(fields->model, tree["model"].is_string() ? tree["model"].get<std::string>() : "")
        << body;
  }
}

// Found by tests/fuzz/completion_scan_fuzz.cpp: a count above 2^63-1 used to wrap to a negative
// number, which the token limits read as "nothing used".
TEST(ScanCompletionTest, HugeCountsSaturate) {
  auto fields = ScanCompletion(
      R"({"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":9223372036854775808},)"
      R"("choices":[{"index":9223372036854775807}]})");
  ASSERT_TRUE(fields.has_value());
  EXPECT_EQ(fields->prompt_tokens, std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(fields->completion_tokens, std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(fields->index, std::numeric_limits<std::int64_t>::max());
}

}  // namespace
}  // namespace staple::chat
