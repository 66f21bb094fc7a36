#pragma once

#include <string>
#include <string_view>

#include "common/result.h"
#include "upstream/client.h"

// What every upstream client sends besides the body: one check of the caller's method and headers
// and one list of the header fields, so that the Asio and libcurl clients cannot drift apart.
namespace staple::upstream {

// "staple/<version>", the version `staple --version` prints.
const std::string& UserAgent();

// The request's header fields in the order they are sent: the caller's (never its Authorization:
// the key is ours to add), then Authorization, then Content-Type, Accept and User-Agent when the
// caller left them out. `stream`: the answer is read as a stream (Accept allows SSE).
// Errors (kInvalidArgument, never naming the key): a method that is not an upper-case token, a
// GET or HEAD with a body, a header name that is not an HTTP token or a value with CR, LF or NUL.
Result<Headers> RequestHeaders(const Settings& settings, const Request& request, bool stream);

// ASCII lower case (header names as Response::headers holds them).
std::string ToLowerAscii(std::string_view text);
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// Replaces every occurrence of `secret` in `text` (no effect for an empty secret).
std::string Redact(std::string text, std::string_view secret);

}  // namespace staple::upstream
