#include "chat/message_fragments.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/history.h"

namespace staple::chat {
namespace {

store::HistoryMessage Message(std::int64_t id, std::string role, std::string content) {
  return store::HistoryMessage{id, std::move(role), std::move(content)};
}

std::string Joined(const store::History& messages, std::size_t first) {
  std::string out;
  for (std::size_t i = first; i < messages.size(); ++i) {
    if (i > first) out += ',';
    out += MessageFragments::Serialize(messages[i]->role, messages[i]->content);
  }
  return out;
}

// Messages 1 to 5, each the user's 100 'x': equal fragments, so a budget counts them.
store::History FiveEqualMessages() {
  std::vector<store::HistoryMessage> rows;
  for (int id = 1; id <= 5; ++id) rows.push_back(Message(id, "user", std::string(100, 'x')));
  return testing::SharedRows(std::move(rows));
}

TEST(MessageFragmentsTest, SerializesLikeNlohmannWithEscapesAndInvalidUtf8Replaced) {
  const std::string fragment = MessageFragments::Serialize("user", "say \"hi\"\n\\ \xff end");
  auto parsed = nlohmann::json::parse(fragment);
  EXPECT_EQ(parsed["role"], "user");
  EXPECT_EQ(parsed["content"], "say \"hi\"\n\\ \xef\xbf\xbd end");
}

TEST(MessageFragmentsTest, AppendsTheMessagesFromFirstJoinedByCommas) {
  MessageFragments fragments(1 << 20);
  const store::History history = testing::SharedRows(
      {Message(1, "user", "one"), Message(2, "assistant", "echo one"), Message(3, "user", "two")});
  std::string out = "[";
  fragments.Append(out, history, 1);
  EXPECT_EQ(out, "[" + Joined(history, 1));
  auto parsed = nlohmann::json::parse(out + "]");
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0]["content"], "echo one");

  // Served again from what was kept: the same text.
  std::string again;
  fragments.Append(again, history, 0);
  EXPECT_EQ(again, Joined(history, 0));
  std::string none;
  fragments.Append(none, history, 3);
  EXPECT_EQ(none, "");
}

TEST(MessageFragmentsTest, KeepsAtMostItsBudgetDroppingTheLeastRecentlyUsed) {
  const std::string fragment = MessageFragments::Serialize("user", std::string(100, 'x'));
  MessageFragments fragments(3 * MessageFragments::CostOf(fragment));
  const store::History history = FiveEqualMessages();
  std::string out;
  fragments.Append(out, history, 0);
  EXPECT_EQ(fragments.bytes(), 3 * MessageFragments::CostOf(fragment));
  EXPECT_EQ(out, Joined(history, 0));

  // A message bigger than the whole budget is serialized but not kept.
  MessageFragments tiny(10);
  std::string big;
  tiny.Append(big, history, 4);
  EXPECT_EQ(big, fragment);
  EXPECT_EQ(tiny.bytes(), 0u);
}

// Over the budget, a fragment served since it was kept survives one more round: the oldest unused
// one goes.
TEST(MessageFragmentsTest, AFragmentUsedAgainOutlivesAnOlderUnusedOne) {
  const std::string fragment = MessageFragments::Serialize("user", std::string(100, 'x'));
  MessageFragments fragments(3 * MessageFragments::CostOf(fragment));
  const store::History history = FiveEqualMessages();
  const auto one = [&](std::size_t index) { return store::History{history[index]}; };
  std::string out;
  fragments.Append(out, history, 0);  // 1..5 in turn: 3, 4 and 5 are kept
  EXPECT_FALSE(fragments.Holds(1));
  EXPECT_TRUE(fragments.Holds(3));

  fragments.Append(out, one(0), 0);  // 1 again: 3, the oldest, goes
  EXPECT_TRUE(fragments.Holds(1));
  EXPECT_FALSE(fragments.Holds(3));
  std::string served;
  fragments.Append(served, one(3), 0);  // 4 is served from what is kept, and marked
  EXPECT_EQ(served, fragment);
  fragments.Append(out, one(1), 0);  // 2: 4 was used, so 5 goes
  EXPECT_TRUE(fragments.Holds(4));
  EXPECT_FALSE(fragments.Holds(5));
  EXPECT_TRUE(fragments.Holds(2));
  EXPECT_EQ(fragments.bytes(), 3 * MessageFragments::CostOf(fragment));
}

// The budget bounds memory, so a kept fragment costs its allocation and its map and list nodes,
// not only its length: a million short messages must not fit where their text alone would.
TEST(MessageFragmentsTest, TheBudgetCountsEachEntrysBookkeeping) {
  MessageFragments fragments(1024 * 1024);
  const store::History history = testing::SharedRows({Message(1, "user", "hi")});
  std::string out;
  fragments.Append(out, history, 0);
  EXPECT_GE(fragments.bytes(), out.size() + 100) << "only the text was counted";
}

}  // namespace
}  // namespace staple::chat
