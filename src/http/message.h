#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "observe/request_note.h"

namespace staple::http {

// Header fields in arrival order. Names compare case-insensitively.
class Headers {
 public:
  void Add(std::string name, std::string value) {
    fields_.emplace_back(std::move(name), std::move(value));
  }
  // Replaces every field of that name.
  void Set(std::string_view name, std::string value);
  // The first value of `name`, if any.
  std::optional<std::string_view> Get(std::string_view name) const;
  const std::vector<std::pair<std::string, std::string>>& fields() const { return fields_; }

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// A request as the handlers see it: no Beast types, so handlers are plain testable functions.
struct Request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as received, with the query
  std::string path;    // target without the query, percent-decoding not applied
  std::string query;   // after '?', may be empty
  Headers headers;
  std::string body;
  std::string peer_address;  // the TCP peer, e.g. "127.0.0.1"
  std::string request_id;    // from X-Request-Id when given, else generated
  // Set by the router, for metrics: the index of the matched route's label in
  // Router::route_labels() (Router::kOtherRoute when no route matched).
  std::size_t route = 0;
  std::vector<std::string> path_params;  // captures of "{name}" segments, in order
  // Filled while the request is handled, written in its access line. Lives until the answer,
  // streamed or not, is out: a stream may refer to it.
  observe::RequestNote note;
};

// Writes the body of a streamed response chunk by chunk (chunked transfer encoding).
class BodyWriter {
 public:
  virtual ~BodyWriter() = default;
  // Sends `data` to the client now. Fails with kCancelled when the client went away or the write
  // deadline passed; the producer then stops.
  virtual net::awaitable<Status> Write(std::string data) = 0;
  // Ends the body without its last chunk, and the connection with it, so that the client sees an
  // incomplete answer rather than a short one (a relay whose source broke). Later writes fail.
  virtual void Abort() {}
};

struct Response {
  int status = 200;
  Headers headers;
  std::string body;
  // When set, the headers are sent at once and this produces the body through the writer; `body`
  // is ignored. Used for server-sent events.
  std::function<net::awaitable<void>(BodyWriter&)> stream;
  // Why a 5xx answer failed, for the log line only (never sent): FailureAnswer fills it.
  std::string reason;
};

// A JSON response with Content-Type application/json.
Response JsonResponse(int status, const nlohmann::json& body);

// A 200 HTML page served from the binary (text/html, Cache-Control: no-cache).
Response HtmlPage(std::string_view html);

}  // namespace staple::http
