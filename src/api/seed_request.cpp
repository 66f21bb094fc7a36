#include "api/seed_request.h"

#include <charconv>
#include <nlohmann/json.hpp>

#include "api/errors.h"

namespace staple::api {
namespace {

using nlohmann::json;

}  // namespace

bool IsJsonContentType(std::string_view value) {
  const auto semicolon = value.find(';');
  auto type = value.substr(0, semicolon);
  while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
  while (!type.empty() && type.front() == ' ') type.remove_prefix(1);
  return http::EqualsIgnoreCase(type, "application/json");
}

std::string DecodePathSegment(std::string_view segment) {
  std::string out;
  out.reserve(segment.size());
  for (std::size_t i = 0; i < segment.size(); ++i) {
    if (segment[i] == '%' && i + 2 < segment.size()) {
      unsigned value = 0;
      const auto [end, ec] =
          std::from_chars(segment.data() + i + 1, segment.data() + i + 3, value, 16);
      if (ec == std::errc() && end == segment.data() + i + 3) {
        out += static_cast<char>(value);
        i += 2;
        continue;
      }
    }
    out += segment[i];
  }
  return out;
}

std::optional<http::Response> ParseSeedRequest(const http::Request& request, SeedRequest& parsed) {
  const auto content_type = request.headers.Get("Content-Type");
  if (!content_type || !IsJsonContentType(*content_type)) {
    return SeedError(415, "Content-Type must be application/json");
  }
  if (request.body.empty()) {
    return SeedError(400, "Request body must be a JSON object");
  }
  auto body = json::parse(request.body, nullptr, false);
  if (body.is_discarded()) {
    return SeedError(400, "Request body is not valid JSON");
  }
  if (!body.is_object()) {
    return SeedError(400, "Request body must be a JSON object");
  }
  const auto prompt = body.find("prompt");
  if (prompt == body.end() || prompt->is_null() ||
      (prompt->is_string() && prompt->get_ref<const std::string&>().empty())) {
    return SeedError(400, "Prompt is required");
  }
  if (!prompt->is_string()) {
    return SeedError(400, "prompt must be a string");
  }
  parsed.prompt = prompt->get<std::string>();
  const auto user_id = body.find("user_id");
  if (user_id != body.end() && !user_id->is_null()) {
    if (!user_id->is_string()) {
      return SeedError(400, "user_id must be a string");
    }
    parsed.user_id = user_id->get<std::string>();
    if (parsed.user_id.size() > kMaxUserIdLength) {
      return SeedError(
          400, "user_id is too long (at most " + std::to_string(kMaxUserIdLength) + " bytes)");
    }
  }
  const auto stream = body.find("stream");
  if (stream != body.end() && !stream->is_null()) {
    if (!stream->is_boolean()) {
      return SeedError(400, "stream must be a boolean");
    }
    parsed.stream = stream->get<bool>();
  }
  return std::nullopt;
}

}  // namespace staple::api
