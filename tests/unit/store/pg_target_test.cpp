#include <gtest/gtest.h>

#include "store/postgres/pg_connection.h"

namespace staple::store::postgres {
namespace {

TEST(PgTargetTest, SplitsAUrlAndDescribesItWithoutThePassword) {
  auto target = ParseTarget("postgresql://staple:s3cret@db.example:5433/chat?sslmode=require");
  ASSERT_TRUE(target) << target.error().message;
  EXPECT_EQ(target->password, "s3cret");
  EXPECT_EQ(target->description, "PostgreSQL staple@db.example:5433/chat");
}

// Found by tests/fuzz/db_url_fuzz.cpp: libpq quotes the token it cannot decode, and a password
// given as a query parameter was not scrubbed from that reason.
TEST(PgTargetTest, ParseErrorsNeverQuoteAPassword) {
  for (const std::string url : {"postgresql://db/chat?password=secr%zzet",
                                "postgresql://db/chat?sslmode=require&password=secr%zzet",
                                "postgresql://staple:secr%zzet@db/chat"}) {
    auto target = ParseTarget(url);
    ASSERT_FALSE(target) << url;
    EXPECT_EQ(target.error().message.find("secr"), std::string::npos) << target.error().message;
    EXPECT_NE(target.error().message.find("percent-encoded"), std::string::npos)
        << target.error().message;
  }
}

// Found by tests/fuzz/db_url_fuzz.cpp: each password was scrubbed from the reason in turn, and a
// one-character password's "***" grew threefold with every further one (exponential time and
// memory for a URL of many `password=*` parameters). One pass now: the reason stays about the
// URL's size, and still quotes no password.
TEST(PgTargetTest, ManyPasswordParametersAreScrubbedInOnePass) {
  std::string url = "postgresql://e:s@h/d?";
  for (int i = 0; i < 60; ++i) url += "password=*&";
  url += "password=qr%zzes";
  auto target = ParseTarget(url);
  ASSERT_FALSE(target);
  const std::string& message = target.error().message;
  EXPECT_EQ(message.find("qr"), std::string::npos) << message;
  EXPECT_LE(message.size(), 3 * url.size() + 64) << message.size();
  EXPECT_NE(message.find("percent-encoded"), std::string::npos) << message;
}

}  // namespace
}  // namespace staple::store::postgres
