#include "keys/keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

namespace staple::keys {
namespace {

using ::testing::HasSubstr;

TEST(GenerateSecret, HasThePrefixLengthAndAlphabet) {
  const std::string secret = GenerateSecret();
  ASSERT_EQ(secret.rfind("sk-staple-", 0), 0u) << secret;
  ASSERT_EQ(secret.size(), 10u + 43u);
  for (char c : secret.substr(10)) {
    EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) << c;
  }
}

TEST(GenerateSecret, IsUniqueAndUsesTheWholeAlphabet) {
  std::set<std::string> secrets;
  std::set<char> seen;
  for (int i = 0; i < 1000; ++i) {
    const std::string secret = GenerateSecret();
    secrets.insert(secret);
    for (char c : secret.substr(10)) seen.insert(c);
  }
  EXPECT_EQ(secrets.size(), 1000u);
  // 43000 uniform draws from 62 characters miss one with probability ~62 * e^-693.
  EXPECT_EQ(seen.size(), 62u);
}

TEST(GenerateId, IsKeyPrefixAndSixteenHexDigits) {
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    const std::string id = GenerateId();
    ASSERT_EQ(id.size(), 20u) << id;
    ASSERT_EQ(id.rfind("key_", 0), 0u) << id;
    for (char c : id.substr(4)) EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << id;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 100u);
}

TEST(HashSecret, IsSha256InLowerCaseHex) {
  EXPECT_EQ(HashSecret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HashSecret(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(SameHash, ComparesWholeValues) {
  const std::string a = HashSecret("a");
  EXPECT_TRUE(SameHash(a, HashSecret("a")));
  EXPECT_FALSE(SameHash(a, HashSecret("b")));
  EXPECT_FALSE(SameHash(a, a.substr(0, 63)));
  EXPECT_FALSE(SameHash("", a));
}

KeyRecord ValidRecord() {
  KeyRecord record;
  record.id = "key_0123456789abcdef";
  record.name = "billing service";
  record.secret_hash = HashSecret("x");
  record.allowed_models = {"gpt-4o-mini"};
  record.request_limits = "10 per minute";
  record.token_limits = "1000/hour;5000/day";
  record.metadata = R"({"team": "billing"})";
  return record;
}

TEST(Validate, AcceptsAValidRecordAndEmptyLimits) {
  EXPECT_TRUE(Validate(ValidRecord()).ok());
  KeyRecord record = ValidRecord();
  record.request_limits.clear();
  record.token_limits.clear();
  record.allowed_models.clear();
  EXPECT_TRUE(Validate(record).ok());
}

void ExpectInvalid(const KeyRecord& record, const std::string& field) {
  const Status status = Validate(record);
  ASSERT_FALSE(status.ok()) << field;
  EXPECT_EQ(status.error().kind, ErrorKind::kInvalidArgument);
  EXPECT_THAT(status.error().message, HasSubstr(field));
}

TEST(Validate, RejectsEachBadFieldNamingIt) {
  KeyRecord record = ValidRecord();
  record.name = std::string(201, 'n');
  ExpectInvalid(record, "name");
  record = ValidRecord();
  record.name = std::string(200, 'n');
  EXPECT_TRUE(Validate(record).ok());
  record.name = "bad \xff utf-8";
  ExpectInvalid(record, "name");

  record = ValidRecord();
  record.request_limits = "ten per minute";
  ExpectInvalid(record, "request_limits");
  record = ValidRecord();
  record.token_limits = "5 per fortnight";
  ExpectInvalid(record, "token_limits");

  record = ValidRecord();
  record.allowed_models = {"a", ""};
  ExpectInvalid(record, "allowed_models");

  record = ValidRecord();
  record.metadata = "[1, 2]";
  ExpectInvalid(record, "metadata");
  record.metadata = "{not json";
  ExpectInvalid(record, "metadata");
  record.metadata = "";
  ExpectInvalid(record, "metadata");
  record.metadata = R"({"x": ")" + std::string(16 * 1024, 'x') + R"("})";
  ExpectInvalid(record, "metadata");
}

TEST(MakeKey, ParsesTheLimits) {
  auto key = MakeKey(ValidRecord());
  ASSERT_TRUE(key.ok()) << key.error().message;
  ASSERT_EQ(key->request_limits.size(), 1u);
  EXPECT_EQ(key->request_limits[0].ToString(), "10 per 1 minute");
  EXPECT_EQ(key->token_limits.size(), 2u);
  KeyRecord bad = ValidRecord();
  bad.token_limits = "nonsense";
  EXPECT_FALSE(MakeKey(bad).ok());
}

TEST(Key, AllowsListedModelsOrAllWhenTheListIsEmpty) {
  Key key;
  EXPECT_TRUE(key.AllowsModel("anything"));
  key.record.allowed_models = {"gpt-4o-mini", "llama3"};
  EXPECT_TRUE(key.AllowsModel("llama3"));
  EXPECT_FALSE(key.AllowsModel("gpt-4o"));
  EXPECT_FALSE(key.AllowsModel("LLAMA3"));
  EXPECT_FALSE(key.AllowsModel(""));
}

TEST(Time, FormatsAndParsesUtc) {
  EXPECT_EQ(FormatUtc(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(FormatUtc(1709296496), "2024-03-01T12:34:56Z");
  EXPECT_EQ(UtcDay(1709296496), "2024-03-01");
  EXPECT_EQ(*ParseUtcTime("2024-03-01T12:34:56Z"), 1709296496);
  EXPECT_EQ(*ParseUtcTime("2024-03-01T12:34:56"), 1709296496);
  EXPECT_EQ(*ParseUtcTime("2024-03-01T12:34:56.789Z"), 1709296496);
  EXPECT_EQ(*ParseUtcTime("2024-03-01T14:34:56+02:00"), 1709296496);
  EXPECT_EQ(*ParseUtcTime("2024-03-01T12:34Z"), 1709296440);
  EXPECT_EQ(*ParseUtcTime("2024-03-01"), 1709251200);
  EXPECT_EQ(*ParseUtcTime("2024-02-29"), 1709164800);
  for (const char* bad : {"", "2024", "2024-13-01", "2023-02-29", "2024-03-01T25:00:00Z",
                          "2024-03-01T12:34:56Q", "tomorrow", "2024-03-01T12:34:56+0200"}) {
    EXPECT_FALSE(ParseUtcTime(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace staple::keys
