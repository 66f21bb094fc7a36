#pragma once

#include <string>
#include <string_view>

#include "common/result.h"
#include "http/message.h"

namespace staple::api {

// Which API family a route belongs to, for the shape of its error answers.
enum class ErrorStyle {
  kSeed,    // {"error": "<message>", "type": "..."}
  kOpenAI,  // {"error": {"message": "...", "type": "...", "code": ...}}
};

// How one kind of failure shows in one API style. The single table (errors.cpp) from ErrorKind
// to status and type, used by every route, its streams included:
//
//   kind              seed             OpenAI (/v1)     type
//   kInvalidArgument  400              400              (seed: none) invalid_request_error
//   kNotFound         404              404              (seed: none) not_found_error
//   kUpstream         500 (the seed's  502              upstream_error
//   kTimeout          500  contract)   504              upstream_timeout
//   kStorage          503              503              storage_error
//   kUnavailable      503              503              service_unavailable
//   kOverloaded       503              503              service_unavailable
//   kLimited          429              429              rate_limit_exceeded
//   kMisconfigured    500              500              configuration_error
//   kInternal, kCancelled  500         500              internal_error
struct FailureShape {
  int status;
  const char* type;  // "" when the seed style has none for this kind
};
FailureShape ShapeOf(ErrorKind kind, ErrorStyle style);

// The JSON answer for `error` in `style` (kMisconfigured adds `X-Should-Retry: false`, which the
// OpenAI SDKs obey).
http::Response FailureAnswer(const Error& error, ErrorStyle style);

// The server-sent event that ends a stream broken after its headers went out:
// `data: {"error": "<message>", "type": "..."}` (seed) or `data: {"error": {...}}` (OpenAI).
std::string FailureEvent(const Error& error, ErrorStyle style);

// A 429 of a request or token limit: the seed's {"error": "Rate limit exceeded", "message":
// `seed_message`} or OpenAI's error with `openai_message` and type `openai_type` ("requests",
// "tokens") and code rate_limit_exceeded; `headers` are added, and Retry-After (whole seconds, at
// least 1).
http::Response LimitExceeded(ErrorStyle style, std::string_view seed_message,
                             std::string_view openai_message, std::string_view openai_type,
                             const http::Headers& headers, double retry_after_seconds);

// The 503 of a limit whose storage cannot be reached (policy `closed`).
http::Response LimiterUnavailable(ErrorStyle style);

// The seed's error shape: {"error": "<message>"} plus an optional "type". A 5xx answer keeps
// `message` as its Response::reason (the log line's), as OpenAIError does.
http::Response SeedError(int status, std::string_view message, std::string_view type = {});

// OpenAI's error shape, which the official SDKs turn into their error classes:
// {"error": {"message": "...", "type": "...", "code": ...}}, with "param" (the offending field)
// when one is given.
http::Response OpenAIError(int status, std::string_view message, std::string_view type,
                           std::string_view code = {}, std::string_view param = {});

// Adds X-Staple-Upstream (which upstream answered) unless `upstream` is "" (a single upstream).
void AddUpstreamHeader(http::Response& response, const std::string& upstream);

// 404 in OpenAI's shape for a model no upstream serves: code model_not_found, param model.
http::Response ModelNotFound(std::string_view model);

// The router's and server's error formatter: OpenAI's shape under /v1/, the seed's elsewhere.
http::Response FormatError(int status, std::string_view message, std::string_view path);

}  // namespace staple::api
