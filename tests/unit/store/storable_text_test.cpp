#include "store/storable_text.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "store_test_util.h"

namespace staple::store {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

TEST(StorableText, WellFormedTextIsKept) {
  for (const std::string& text : {std::string(), std::string("plain"),
                                  std::string("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9D\x84\x9E"),
                                  std::string("\xED\x9F\xBF"),  // U+D7FF, just below the surrogates
                                  std::string("\xF4\x8F\xBF\xBF"),  // U+10FFFF
                                  std::string("\xEF\xBF\xBD")}) {   // U+FFFD itself
    EXPECT_TRUE(IsStorableText(text)) << text;
    EXPECT_EQ(ToStorableText(text), text);
  }
}

TEST(StorableText, NulBytesAreReplaced) {
  EXPECT_FALSE(IsStorableText(std::string("a\0b", 3)));
  EXPECT_EQ(ToStorableText(std::string("a\0b", 3)), "a" + kFffd + "b");
  EXPECT_EQ(ToStorableText(std::string("\0\0", 2)), kFffd + kFffd);
}

TEST(StorableText, EachMaximalInvalidSubpartBecomesOneReplacement) {
  EXPECT_EQ(ToStorableText("x\xffy"), "x" + kFffd + "y");
  EXPECT_EQ(ToStorableText("\xC3\x28"), kFffd + "(");                // missing continuation
  EXPECT_EQ(ToStorableText("\xE2\x82"), kFffd);                      // truncated at the end
  EXPECT_EQ(ToStorableText("\xE2\x82x"), kFffd + "x");               // one subpart of two bytes
  EXPECT_EQ(ToStorableText("\xF0\x9D\x84"), kFffd);                  // three of four bytes
  EXPECT_EQ(ToStorableText("\x80\xBF"), kFffd + kFffd);              // lone continuations
  EXPECT_EQ(ToStorableText("\xC0\xAF"), kFffd + kFffd);              // overlong '/'
  EXPECT_EQ(ToStorableText("\xE0\x80\xAF"), kFffd + kFffd + kFffd);  // overlong, 3 bytes
  EXPECT_EQ(ToStorableText("\xED\xA0\x80"), kFffd + kFffd + kFffd);  // surrogate U+D800
  EXPECT_EQ(ToStorableText("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
  EXPECT_EQ(ToStorableText("\xF5\xFE"), kFffd + kFffd);
  EXPECT_EQ(ToStorableText("ok\xE2\x82\xAC\xFFok"), "ok\xE2\x82\xAC" + kFffd + "ok");
}

// Plain ASCII is checked a word of 8 bytes at a time: a NUL, a stray byte or a sequence is found
// wherever it sits relative to those words, and a sequence across two words is kept.
TEST(StorableText, WhatBreaksTextIsFoundAtEveryOffset) {
  for (std::size_t length = 1; length <= 40; ++length) {
    for (std::size_t at = 0; at < length; ++at) {
      std::string text(length, 'a');
      text[at] = '\0';
      EXPECT_FALSE(IsStorableText(text)) << "NUL at " << at << " of " << length;
      EXPECT_EQ(ToStorableText(text).find('\0'), std::string::npos);
      text[at] = '\x80';
      EXPECT_FALSE(IsStorableText(text)) << "0x80 at " << at << " of " << length;
      text[at] = '\xC3';  // a lead byte cut short (by 'a', or by the end)
      EXPECT_FALSE(IsStorableText(text)) << "0xC3 at " << at << " of " << length;
      std::string emoji(length, 'a');
      emoji.insert(at, "\xF0\x9F\x98\x80");  // U+1F600, four bytes
      EXPECT_TRUE(IsStorableText(emoji)) << "U+1F600 at " << at << " of " << length;
      EXPECT_EQ(ToStorableText(emoji), emoji);
    }
  }
}

TEST(StorableText, MakeStorableFixesEveryTextField) {
  const std::string user_id("u\0", 2);
  const std::string request_id("r\xff");
  const std::string model("m\xC3");
  const std::string prompt("a\0b", 3);
  const std::string completion("x\xffy");
  Turn turn = testing::MakeTurn(user_id, 1);
  turn.request_id = request_id;
  turn.model = model;
  turn.prompt = prompt;
  turn.completion = completion;
  MakeStorable(turn);
  EXPECT_EQ(turn.user_id, "u" + kFffd);
  EXPECT_EQ(turn.request_id, "r" + kFffd);
  EXPECT_EQ(turn.model, "m" + kFffd);
  EXPECT_EQ(turn.prompt, "a" + kFffd + "b");
  EXPECT_EQ(turn.completion, "x" + kFffd + "y");
}

TEST(StorableText, MakeStorableFixesAResponseRecordWithoutTouchingTheShared) {
  auto record = std::make_shared<ResponseRecord>();
  record->response.id = "resp_1";
  record->input.push_back({std::string("msg\0", 4), R"({"id":"msg"})"});
  record->output.push_back({"fc_1", "{}"});
  Turn turn = testing::MakeTurn("u", 1);
  turn.response = record;
  MakeStorable(turn);
  ASSERT_NE(turn.response, nullptr);
  EXPECT_NE(turn.response.get(), record.get());
  EXPECT_EQ(turn.response->input[0].id, "msg" + kFffd);
  EXPECT_EQ(turn.response->output[0].id, "fc_1");
  EXPECT_EQ(record->input[0].id, std::string("msg\0", 4));  // the original is unchanged

  // A clean record is not copied.
  auto clean = std::make_shared<ResponseRecord>();
  clean->response.id = "resp_2";
  turn.response = clean;
  MakeStorable(turn);
  EXPECT_EQ(turn.response.get(), clean.get());
}

}  // namespace
}  // namespace staple::store
