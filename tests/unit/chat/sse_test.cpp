#include "chat/sse.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace staple::chat {
namespace {

// Feeds `pieces` one by one and returns the data of every dispatched event.
std::vector<std::string> DataOf(const std::vector<std::string>& pieces) {
  SseParser parser;
  std::vector<SseEvent> events;
  for (const auto& piece : pieces) {
    EXPECT_TRUE(parser.Feed(piece, events).ok());
  }
  std::vector<std::string> data;
  for (const auto& event : events) data.push_back(event.data);
  return data;
}

TEST(SseParserTest, DispatchesEventsOnBlankLines) {
  EXPECT_EQ(DataOf({"data: a\n\ndata: b\n\n"}), (std::vector<std::string>{"a", "b"}));
}

TEST(SseParserTest, EventsSplitAcrossChunksAtEveryByte) {
  const std::string body = "data: {\"x\":1}\n\ndata: [DONE]\n\n";
  for (std::size_t cut = 0; cut <= body.size(); ++cut) {
    EXPECT_EQ(DataOf({body.substr(0, cut), body.substr(cut)}),
              (std::vector<std::string>{"{\"x\":1}", "[DONE]"}))
        << "cut at " << cut;
  }
  std::vector<std::string> bytes;
  for (char c : body) bytes.emplace_back(1, c);
  EXPECT_EQ(DataOf(bytes), (std::vector<std::string>{"{\"x\":1}", "[DONE]"}));
}

TEST(SseParserTest, UnderstandsCrLfAndCrLineEndings) {
  EXPECT_EQ(DataOf({"data: a\r\n\r\ndata: b\r\rdata: c\n\n"}),
            (std::vector<std::string>{"a", "b", "c"}));
  // A CRLF split between two chunks is one line ending, not two.
  EXPECT_EQ(DataOf({"data: a\r", "\n\r", "\ndata: b\r\n\r\n"}),
            (std::vector<std::string>{"a", "b"}));
}

TEST(SseParserTest, IgnoresCommentsAndOtherFields) {
  EXPECT_EQ(DataOf({": keep-alive\n\nid: 7\nretry: 100\ndata: a\n: note\n\n"}),
            (std::vector<std::string>{"a"}));
}

TEST(SseParserTest, JoinsMultiLineData) {
  EXPECT_EQ(DataOf({"data: one\ndata:two\ndata:  three\n\n"}),
            (std::vector<std::string>{"one\ntwo\n three"}));
  // "data" without a colon is an empty data line.
  EXPECT_EQ(DataOf({"data\ndata: x\n\n"}), (std::vector<std::string>{"\nx"}));
}

TEST(SseParserTest, KeepsTheEventType) {
  SseParser parser;
  std::vector<SseEvent> events;
  ASSERT_TRUE(parser.Feed("event: error\ndata: boom\n\ndata: plain\n\n", events).ok());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].event, "error");
  EXPECT_EQ(events[0].data, "boom");
  EXPECT_EQ(events[1].event, "");
}

TEST(SseParserTest, DropsAnEventWithoutItsBlankLine) {
  SseParser parser;
  std::vector<SseEvent> events;
  ASSERT_TRUE(parser.Feed("data: a\n\ndata: unfinished\n", events).ok());
  EXPECT_EQ(events.size(), 1u);
  EXPECT_TRUE(parser.has_partial_event());
}

TEST(SseParserTest, SkipsAByteOrderMark) {
  EXPECT_EQ(DataOf({"\xEF\xBB",
                    "\xBF"
                    "data: a\n\n"}),
            (std::vector<std::string>{"a"}));
}

TEST(SseParserTest, ReportsEventEndsAndTheLastBoundary) {
  SseParser parser;
  std::vector<SseEvent> events;
  const std::string chunk = "data: a\n\n: c\n\ndata: [DO";
  ASSERT_TRUE(parser.Feed(chunk, events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].end, 9u);
  ASSERT_TRUE(parser.boundary().has_value());
  EXPECT_EQ(*parser.boundary(), 14u);  // after the comment's blank line
  events.clear();
  ASSERT_TRUE(parser.Feed("NE]\r\n\r\n", events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data, "[DONE]");
  EXPECT_EQ(events[0].end, 7u);  // the whole CRLF belongs to the event
  events.clear();
  ASSERT_TRUE(parser.Feed("data: x", events).ok());
  EXPECT_FALSE(parser.boundary().has_value());
}

TEST(SseParserTest, RejectsOversizedEvents) {
  SseParser parser(16);
  std::vector<SseEvent> events;
  EXPECT_TRUE(parser.Feed("data: short\n\n", events).ok());
  Status status = parser.Feed("data: " + std::string(32, 'x'), events);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().kind, ErrorKind::kUpstream);
  EXPECT_FALSE(parser.Feed("\n\n", events).ok());
}

}  // namespace
}  // namespace staple::chat
