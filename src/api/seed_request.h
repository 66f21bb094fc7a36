#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "http/message.h"

namespace staple::api {

// The longest conversation id accepted, in the body or in a path.
inline constexpr std::size_t kMaxUserIdLength = 256;

// Request-body checks of the seed endpoint, as plain functions (tested without a server, and
// fuzzed by tests/fuzz/seed_request_fuzz.cpp).
struct SeedRequest {
  std::string prompt;
  std::string user_id;  // empty when the client sent none
  bool stream = false;  // "stream": true asks for server-sent events
};
// Validates Content-Type and body into `parsed`; when invalid, returns the 400/415 answer instead.
std::optional<http::Response> ParseSeedRequest(const http::Request& request, SeedRequest& parsed);

// Whether a Content-Type value names application/json (parameters such as charset allowed).
bool IsJsonContentType(std::string_view value);

// Percent-decodes a path segment; invalid escapes are kept as they are.
std::string DecodePathSegment(std::string_view segment);

}  // namespace staple::api
