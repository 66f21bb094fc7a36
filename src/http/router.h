#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "http/message.h"

namespace staple::http {

using Handler = std::function<net::awaitable<Response>(Request&)>;

// Maps (method, path) to a handler. Patterns are literal paths whose segments may be "{name}"
// captures, e.g. "/users/{user_id}/messages"; captures land in Request::path_params in order.
// Routes are added at start-up only; Dispatch is then thread-safe.
//
// Each route carries a metrics label chosen by whoever registers it. The router interns the labels
// (same label, same index) and Dispatch stores the matched route's index in Request::route, so the
// server counts requests in plain arrays (observe::Metrics::SetRouteLabels) without a lookup.
class Router {
 public:
  // The label index of requests that matched no route (404s); its label is "other".
  static constexpr std::size_t kOtherRoute = 0;

  // Builds the JSON error body for 404/405 (and for the server's own 400/413 answers), so each API
  // family keeps its own error shape. Gets the status, a message and the request path.
  using ErrorFormatter =
      std::function<Response(int status, std::string_view message, std::string_view path)>;

  explicit Router(ErrorFormatter format_error);

  // `route_label` names the route in metrics (e.g. "/v1/models"); routes may share a label.
  void Add(std::string method, std::string pattern, std::string_view route_label, Handler handler);

  // The handler of every path under `prefix` (e.g. "/v1/") that no pattern matches, whatever its
  // method: a pass-through. Paths a pattern matches keep their 405 for other methods.
  void SetFallback(std::string prefix, std::string_view route_label, Handler handler);

  // Runs the matching handler; the fallback when no pattern matches a path under its prefix;
  // else 404 when no pattern matches the path, 405 with `Allow` when the path matches but the
  // method does not.
  net::awaitable<Response> Dispatch(Request& request) const;

  const ErrorFormatter& format_error() const { return format_error_; }

  // The interned route labels, indexed by Request::route; [kOtherRoute] is "other".
  const std::vector<std::string>& route_labels() const { return route_labels_; }

 private:
  struct Entry {
    std::string method;
    std::vector<std::string> segments;
    std::size_t route;  // index into route_labels_
    Handler handler;
  };
  static bool Match(const Entry& entry, std::string_view path, std::vector<std::string>* params);

  std::size_t Intern(std::string_view route_label);

  ErrorFormatter format_error_;
  std::vector<Entry> entries_;
  std::string fallback_prefix_;
  std::size_t fallback_route_ = kOtherRoute;
  Handler fallback_;
  std::vector<std::string> route_labels_{"other"};
};

}  // namespace staple::http
