#include "api/errors.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace staple::api {
namespace {

using nlohmann::json;

std::string SseData(const json& value) {
  return "data: " + value.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace

FailureShape ShapeOf(ErrorKind kind, ErrorStyle style) {
  const bool seed = style == ErrorStyle::kSeed;
  switch (kind) {
    case ErrorKind::kInvalidArgument:
      return {400, seed ? "" : "invalid_request_error"};
    case ErrorKind::kNotFound:
      return {404, seed ? "" : "not_found_error"};
    case ErrorKind::kUpstream:
      return {seed ? 500 : 502, "upstream_error"};
    case ErrorKind::kTimeout:
      return {seed ? 500 : 504, "upstream_timeout"};
    case ErrorKind::kStorage:
      return {503, "storage_error"};
    case ErrorKind::kUnavailable:
    case ErrorKind::kOverloaded:
      return {503, "service_unavailable"};
    case ErrorKind::kLimited:
      return {429, "rate_limit_exceeded"};
    case ErrorKind::kMisconfigured:
      return {500, "configuration_error"};
    case ErrorKind::kCancelled:
    case ErrorKind::kInternal:
      break;
  }
  return {500, "internal_error"};
}

void AddUpstreamHeader(http::Response& response, const std::string& upstream) {
  if (!upstream.empty()) response.headers.Add("X-Staple-Upstream", upstream);
}

http::Response ModelNotFound(std::string_view model) {
  return OpenAIError(404,
                     "The model '" + std::string(model.substr(0, 256)) +
                         "' does not exist or is not served by this gateway",
                     "invalid_request_error", "model_not_found", "model");
}

http::Response FailureAnswer(const Error& error, ErrorStyle style) {
  const auto shape = ShapeOf(error.kind, style);
  http::Response response = style == ErrorStyle::kSeed
                                ? SeedError(shape.status, error.message, shape.type)
                                : OpenAIError(shape.status, error.message, shape.type);
  // A missing upstream key does not heal by retrying: the OpenAI SDKs read this header and do not
  // retry the 500 (which would spend the client's request limits for nothing).
  if (error.kind == ErrorKind::kMisconfigured) response.headers.Add("X-Should-Retry", "false");
  return response;
}

std::string FailureEvent(const Error& error, ErrorStyle style) {
  const auto shape = ShapeOf(error.kind, style);
  if (style == ErrorStyle::kSeed) return SseData({{"error", error.message}, {"type", shape.type}});
  return SseData(
      {{"error", {{"message", error.message}, {"type", shape.type}, {"code", nullptr}}}});
}

http::Response LimitExceeded(ErrorStyle style, std::string_view seed_message,
                             std::string_view openai_message, std::string_view openai_type,
                             const http::Headers& headers, double retry_after_seconds) {
  http::Response response =
      style == ErrorStyle::kSeed
          ? http::JsonResponse(429, {{"error", "Rate limit exceeded"}, {"message", seed_message}})
          : OpenAIError(429, openai_message, openai_type, "rate_limit_exceeded");
  for (const auto& [name, value] : headers.fields()) response.headers.Add(name, value);
  const auto retry =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(retry_after_seconds)));
  response.headers.Add("Retry-After", std::to_string(retry));
  return response;
}

http::Response LimiterUnavailable(ErrorStyle style) {
  const std::string message = "Rate limiting is unavailable; try again later";
  return style == ErrorStyle::kSeed
             ? SeedError(503, message, "ratelimit_unavailable")
             : OpenAIError(503, message, "server_error", "ratelimit_unavailable");
}

http::Response SeedError(int status, std::string_view message, std::string_view type) {
  json body = {{"error", message}};
  if (!type.empty()) body["type"] = type;
  auto response = http::JsonResponse(status, body);
  if (status >= 500) response.reason = message;
  return response;
}

http::Response OpenAIError(int status, std::string_view message, std::string_view type,
                           std::string_view code, std::string_view param) {
  json error = {{"message", message}, {"type", type}, {"code", nullptr}};
  if (!code.empty()) error["code"] = code;
  if (!param.empty()) error["param"] = param;
  auto response = http::JsonResponse(status, {{"error", error}});
  if (status >= 500) response.reason = message;
  return response;
}

http::Response FormatError(int status, std::string_view message, std::string_view path) {
  if (path.rfind("/v1/", 0) == 0) {
    const char* type = status == 404   ? "not_found_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    return OpenAIError(status, message, type);
  }
  return SeedError(status, message);
}

}  // namespace staple::api
