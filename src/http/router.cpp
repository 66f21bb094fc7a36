#include "http/router.h"

#include <algorithm>

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

// A pattern segment such as "{user_id}".
bool IsParameter(const std::string& segment) {
  return segment.size() >= 2 && segment.front() == '{' && segment.back() == '}';
}

}  // namespace

Router::Router(ErrorFormatter format_error) : format_error_(std::move(format_error)) {}

std::size_t Router::Intern(std::string_view route_label) {
  auto label = std::find(route_labels_.begin(), route_labels_.end(), route_label);
  if (label == route_labels_.end()) label = route_labels_.emplace(label, route_label);
  return static_cast<std::size_t>(label - route_labels_.begin());
}

void Router::SetFallback(std::string prefix, std::string_view route_label, Handler handler) {
  fallback_prefix_ = std::move(prefix);
  fallback_route_ = Intern(route_label);
  fallback_ = std::move(handler);
}

void Router::Add(std::string method, std::string pattern, std::string_view route_label,
                 Handler handler) {
  const auto route = Intern(route_label);
  Entry entry{std::move(method), {}, route, std::move(handler)};
  for (auto part : SplitPath(pattern)) entry.segments.emplace_back(part);
  entries_.push_back(std::move(entry));
}

// Walks the path's segments in step with the pattern's, without splitting it into a vector first:
// every request is matched against every route until one fits. Captures are collected only when
// asked for (Dispatch asks once the route is known to match).
bool Router::Match(const Entry& entry, std::string_view path, std::vector<std::string>* params) {
  std::string_view rest = path;
  if (!rest.empty() && rest.front() == '/') rest.remove_prefix(1);
  bool more = true;  // a segment is left to read (an empty path still has one, "")
  std::vector<std::string> captured;
  for (const auto& segment : entry.segments) {
    if (!more) return false;
    const auto end = rest.find('/');
    const std::string_view part = rest.substr(0, end);
    if (end == std::string_view::npos) {
      more = false;
    } else {
      rest.remove_prefix(end + 1);
    }
    if (IsParameter(segment)) {
      if (part.empty()) return false;
      if (params != nullptr) captured.emplace_back(part);
    } else if (segment != part) {
      return false;
    }
  }
  if (more) return false;
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
  if (fallback_ && request.path.starts_with(fallback_prefix_)) {
    request.route = fallback_route_;
    co_return co_await fallback_(request);
  }
  request.route = kOtherRoute;
  co_return format_error_(404, "Not found: " + request.path, request.path);
}

}  // namespace staple::http
