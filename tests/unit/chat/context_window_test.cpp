#include "chat/context_window.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "support/history.h"

namespace staple::chat {
namespace {

store::History Turns(int count, std::size_t content_chars = 5) {
  std::vector<store::HistoryMessage> history;
  for (int i = 0; i < count; ++i) {
    store::HistoryMessage question;
    question.role = "user";
    question.content = "q" + std::to_string(i) + std::string(content_chars - 2, 'x');
    store::HistoryMessage answer;
    answer.role = "assistant";
    answer.content = "a" + std::to_string(i) + std::string(content_chars - 2, 'y');
    history.push_back(question);
    history.push_back(answer);
  }
  return testing::SharedRows(std::move(history));
}

std::vector<std::string> Roles(const std::vector<ChatMessage>& messages) {
  std::vector<std::string> roles;
  for (const auto& m : messages) roles.push_back(m.role);
  return roles;
}

TEST(ContextWindowTest, WindowStartIsWhereHistoryWindowBegins) {
  const auto history = Turns(10, 10);
  for (std::size_t max_messages : {0u, 1u, 2u, 5u, 8u, 100u}) {
    const WindowLimits limits{max_messages, 0};
    const std::size_t first = WindowStart(history, limits);
    const auto kept = HistoryWindow(history, limits);
    ASSERT_EQ(history.size() - first, kept.size()) << max_messages;
    if (!kept.empty()) {
      EXPECT_EQ(kept.front().content, history[first]->content);
    }
  }
  EXPECT_EQ(WindowStart({}, {}), 0u);
}

// The window by its definition: whole turns from the newest back, every message's characters
// counted, while both limits hold.
std::size_t CountedWindowStart(const store::History& history, const WindowLimits& limits) {
  std::size_t first_kept = history.size();
  std::size_t messages = 0;
  std::size_t chars = 0;
  std::size_t turn_end = history.size();
  for (std::size_t i = history.size(); i-- > 0;) {
    if (history[i]->role != "user") continue;
    std::size_t turn_chars = 0;
    for (std::size_t j = i; j < turn_end; ++j) turn_chars += CountChars(history[j]->content);
    if (limits.max_messages != 0 && messages + (turn_end - i) > limits.max_messages) break;
    if (limits.max_chars != 0 && chars + turn_chars > limits.max_chars) break;
    messages += turn_end - i;
    chars += turn_chars;
    first_kept = i;
    turn_end = i;
  }
  return first_kept;
}

// WindowStart counts characters only when the bytes might not fit; the window must be the same as
// counting them all, for text of 1- to 4-byte characters, replies without their question and
// limits that bind on bytes but not on characters.
TEST(ContextWindowTest, WindowStartIsTheCountedWindow) {
  const std::vector<std::string> pieces = {"a", "\xc3\xa9", "\xe4\xbd\xa0", "\xf0\x9f\x8e\x89"};
  std::mt19937 random(7);
  for (int round = 0; round < 400; ++round) {
    std::vector<store::HistoryMessage> rows;
    const int count = static_cast<int>(random() % 12);
    for (int i = 0; i < count; ++i) {
      store::HistoryMessage row;
      row.role = random() % 3 == 0 ? "assistant" : (random() % 4 == 0 ? "tool" : "user");
      const int length = static_cast<int>(random() % 6);
      for (int c = 0; c < length; ++c) row.content += pieces[random() % pieces.size()];
      rows.push_back(std::move(row));
    }
    const store::History history = testing::SharedRows(std::move(rows));
    for (std::size_t max_messages : {0u, 1u, 2u, 3u, 5u, 100u}) {
      for (std::size_t max_chars : {0u, 1u, 3u, 4u, 7u, 10u, 16u, 40u}) {
        const WindowLimits limits{max_messages, max_chars};
        ASSERT_EQ(WindowStart(history, limits), CountedWindowStart(history, limits))
            << "round " << round << ", limits " << max_messages << "/" << max_chars;
      }
    }
  }
}

TEST(ContextWindowTest, EmptyHistorySendsThePromptOnly) {
  auto context = BuildContext({}, {}, "", "hello");
  ASSERT_EQ(context.size(), 1u);
  EXPECT_EQ(context[0].role, "user");
  EXPECT_EQ(context[0].content, "hello");
}

TEST(ContextWindowTest, SystemPromptComesFirst) {
  auto context = BuildContext(Turns(1), {}, "be brief", "next");
  EXPECT_EQ(Roles(context), (std::vector<std::string>{"system", "user", "assistant", "user"}));
  EXPECT_EQ(context[0].content, "be brief");
  EXPECT_EQ(context.back().content, "next");
}

TEST(ContextWindowTest, MessageLimitKeepsTheNewestWholeTurns) {
  auto context = BuildContext(Turns(5), {3, 0}, "", "next");
  // 3 messages allow one whole turn only (two would need 4).
  ASSERT_EQ(context.size(), 3u);
  EXPECT_EQ(context[0].content.substr(0, 2), "q4");
  EXPECT_EQ(context[1].content.substr(0, 2), "a4");
}

TEST(ContextWindowTest, CharLimitDropsOldestTurnsFirst) {
  // Each turn is 2 x 10 characters.
  auto context = BuildContext(Turns(4, 10), {0, 45}, "", "next");
  ASSERT_EQ(context.size(), 5u);
  EXPECT_EQ(context[0].content.substr(0, 2), "q2");
  EXPECT_EQ(context[2].content.substr(0, 2), "q3");
}

TEST(ContextWindowTest, ZeroMeansNoLimit) {
  auto context = BuildContext(Turns(200), {0, 0}, "", "next");
  EXPECT_EQ(context.size(), 401u);
}

TEST(ContextWindowTest, ThePromptAlwaysGoesEvenWhenNothingElseFits) {
  auto context = BuildContext(Turns(3, 100), {100, 10}, "", std::string(1000, 'p'));
  ASSERT_EQ(context.size(), 1u);
  EXPECT_EQ(context[0].content.size(), 1000u);
}

TEST(ContextWindowTest, LeadingReplyWithoutItsQuestionIsDropped) {
  auto history = Turns(2);
  history.erase(history.begin());  // starts with "a0"
  auto context = BuildContext(history, {}, "", "next");
  EXPECT_EQ(Roles(context), (std::vector<std::string>{"user", "assistant", "user"}));
  EXPECT_EQ(context[0].content.substr(0, 2), "q1");
}

TEST(ContextWindowTest, CharactersAreCodePoints) {
  EXPECT_EQ(CountChars("héllo"), 5u);
  EXPECT_EQ(CountChars("你好🎉"), 3u);
  EXPECT_EQ(CountChars(""), 0u);
}

}  // namespace
}  // namespace staple::chat
