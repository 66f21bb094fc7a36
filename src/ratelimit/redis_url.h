#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace staple::ratelimit {

// Where a Redis server is and how to log in: the part of the limiter's options a
// STAPLE_RATELIMIT_STORAGE URL names. Plain data with no dependency on the Redis client, so the
// configuration can validate a URL without linking the Redis limiter.
struct RedisAddress {
  std::string host = "127.0.0.1";
  std::uint16_t port = 6379;
  int db = 0;
  // Sent with AUTH on every new connection when the password is set (username too when set).
  std::string username;
  std::string password;
};

// Parses "redis://[[username]:password@]host[:port][/db]" (port defaults to 6379, db to 0; the
// credentials percent-encoded, a '%' not followed by two hex digits kept as is). Errors are
// kInvalidArgument naming what is wrong, never quoting the password. rediss:// (TLS) is refused.
Result<RedisAddress> ParseRedisAddress(std::string_view url);

}  // namespace staple::ratelimit
