#include "upstream/request_head.h"

#include <algorithm>

#include "observe/metrics.h"

namespace staple::upstream {
namespace {

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// A header name is an HTTP token; a value must not end the line early (no header injection).
bool ValidHeader(std::string_view name, std::string_view value) {
  if (name.empty()) return false;
  for (char c : name) {
    const bool token = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    if (!token) return false;
  }
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

bool ValidMethod(std::string_view method) {
  return !method.empty() &&
         std::all_of(method.begin(), method.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

}  // namespace

std::string ToLowerAscii(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), Lower);
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return Lower(x) == Lower(y); });
}

const std::string& UserAgent() {
  static const std::string user_agent = std::string("staple/") + observe::BuildVersion();
  return user_agent;
}

Result<Headers> RequestHeaders(const Settings& settings, const Request& request, bool stream) {
  if (!ValidMethod(request.method)) {
    return MakeError(ErrorKind::kInvalidArgument, "invalid HTTP method for the upstream request");
  }
  if ((request.method == "GET" || request.method == "HEAD") && !request.body.empty()) {
    return MakeError(ErrorKind::kInvalidArgument, "a GET or HEAD upstream request has no body");
  }
  Headers fields;
  fields.reserve(request.headers.size() + 4);
  bool has_content_type = false;
  bool has_accept = false;
  bool has_user_agent = false;
  for (const auto& [name, value] : request.headers) {
    if (!ValidHeader(name, value)) {
      return MakeError(ErrorKind::kInvalidArgument, "invalid upstream request header");
    }
    if (EqualsIgnoreCase(name, "authorization")) continue;
    has_user_agent = has_user_agent || EqualsIgnoreCase(name, "user-agent");
    has_content_type = has_content_type || EqualsIgnoreCase(name, "content-type");
    has_accept = has_accept || EqualsIgnoreCase(name, "accept");
    fields.emplace_back(name, value);
  }
  if (!settings.api_key.empty()) {
    if (!ValidHeader("Authorization", settings.api_key)) {
      return MakeError(ErrorKind::kInvalidArgument, "the upstream API key contains a line break");
    }
    fields.emplace_back("Authorization", "Bearer " + settings.api_key);
  }
  if (!request.body.empty() && !has_content_type) {
    fields.emplace_back("Content-Type", "application/json");
  }
  if (!has_accept) {
    fields.emplace_back("Accept",
                        stream ? "text/event-stream, application/json" : "application/json");
  }
  if (!has_user_agent) fields.emplace_back("User-Agent", UserAgent());
  return fields;
}

std::string Redact(std::string text, std::string_view secret) {
  if (secret.empty()) return text;
  for (auto at = text.find(secret); at != std::string::npos; at = text.find(secret, at)) {
    text.replace(at, secret.size(), "[redacted]");
  }
  return text;
}

}  // namespace staple::upstream
