// ParseRedisAddress: what a STAPLE_RATELIMIT_STORAGE URL names. Pure parsing, no server.

#include "ratelimit/redis_url.h"

#include <gtest/gtest.h>

namespace staple::ratelimit {
namespace {

TEST(ParseRedisAddressTest, ParsesPercentEncodedCredentials) {
  auto password_only = ParseRedisAddress("redis://:s3cret@cache:6380/1");
  ASSERT_TRUE(password_only.ok()) << password_only.error().message;
  EXPECT_EQ(password_only->username, "");
  EXPECT_EQ(password_only->password, "s3cret");
  EXPECT_EQ(password_only->host, "cache");
  EXPECT_EQ(password_only->port, 6380);
  EXPECT_EQ(password_only->db, 1);
  auto user = ParseRedisAddress("redis://app%20user:p%40ss:w@cache");
  ASSERT_TRUE(user.ok()) << user.error().message;
  EXPECT_EQ(user->username, "app user");
  EXPECT_EQ(user->password, "p@ss:w");
  EXPECT_EQ(user->host, "cache");
  auto unencoded = ParseRedisAddress("redis://:p@ss@cache");
  ASSERT_TRUE(unencoded.ok());
  EXPECT_EQ(unencoded->password, "p@ss");
  auto refused = ParseRedisAddress("redis://:hunter2@cache:notaport");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().message.find("hunter2"), std::string::npos);
}

TEST(ParseRedisAddressTest, ParsesHostPortAndDatabase) {
  auto a = ParseRedisAddress("redis://127.0.0.1:6380/2");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->db, 2);
  auto b = ParseRedisAddress("redis://cache");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "cache");
  EXPECT_EQ(b->port, 6379);
  EXPECT_EQ(b->db, 0);
  auto c = ParseRedisAddress("redis://localhost:7000/");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->port, 7000);
  EXPECT_EQ(c->db, 0);
  for (const char* bad :
       {"memory://", "redis://", "redis://:6379", "redis://h:0", "redis://h:70000", "redis://h:x",
        "redis://h:6379/x", "redis://h:6379/-1", "redis://pw@h:6379", "redis://user:@h",
        "rediss://h:6379", "http://h:6379"}) {
    auto parsed = ParseRedisAddress(bad);
    EXPECT_FALSE(parsed.ok()) << bad;
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.error().kind, ErrorKind::kInvalidArgument) << bad;
    }
  }
}

// A '%' not followed by two hex digits is kept as it is (as libcurl and redis-cli decode).
TEST(ParseRedisAddressTest, KeepsAPercentThatIsNotAnEscape) {
  auto parsed = ParseRedisAddress("redis://:50%25%zz%4@cache");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->password, "50%%zz%4");
  auto upper = ParseRedisAddress("redis://%41:%4a%4A@cache");
  ASSERT_TRUE(upper.ok()) << upper.error().message;
  EXPECT_EQ(upper->username, "A");
  EXPECT_EQ(upper->password, "JJ");
}

}  // namespace
}  // namespace staple::ratelimit
