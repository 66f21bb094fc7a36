#include "http/router.h"

namespace staple::http {
namespace {

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  if (!path.empty() && path.front() == '/') start = 1;
  while (start <= path.size()) {
    const auto end = path.find('/', start);
    if (end == std::string_view::npos) {
      parts.push_back(path.substr(start));
      break;
    }
    parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

}  // namespace

Router::Router(ErrorFormatter format_error) : format_error_(std::move(format_error)) {}

void Router::Add(std::string method, std::string pattern, observe::Route route, Handler handler) {
  Entry entry{std::move(method), {}, route, std::move(handler)};
  for (auto part : SplitPath(pattern)) entry.segments.emplace_back(part);
  entries_.push_back(std::move(entry));
}

bool Router::Match(const Entry& entry, std::string_view path, std::vector<std::string>* params) {
  const auto parts = SplitPath(path);
  if (parts.size() != entry.segments.size()) return false;
  std::vector<std::string> captured;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const auto& segment = entry.segments[i];
    if (segment.size() >= 2 && segment.front() == '{' && segment.back() == '}') {
      if (parts[i].empty()) return false;
      captured.emplace_back(parts[i]);
    } else if (segment != parts[i]) {
      return false;
    }
  }
  if (params != nullptr) *params = std::move(captured);
  return true;
}

net::awaitable<Response> Router::Dispatch(Request& request) const {
  std::string allow;
  for (const auto& entry : entries_) {
    if (!Match(entry, request.path, nullptr)) continue;
    request.route = entry.route;
    if (entry.method == request.method) {
      Match(entry, request.path, &request.path_params);
      co_return co_await entry.handler(request);
    }
    if (!allow.empty()) allow += ", ";
    allow += entry.method;
  }
  if (!allow.empty()) {
    auto response = format_error_(
        405, "Method " + request.method + " is not allowed here; use " + allow, request.path);
    response.headers.Set("Allow", allow);
    co_return response;
  }
  request.route = observe::Route::kOther;
  co_return format_error_(404, "Not found: " + request.path, request.path);
}

}  // namespace staple::http
