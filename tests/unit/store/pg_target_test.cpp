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

}  // namespace
}  // namespace staple::store::postgres
