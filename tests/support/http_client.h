#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace staple::testing {

// Request headers as (name, value) pairs, sent in order.
using Headers = std::vector<std::pair<std::string, std::string>>;

struct HttpResponse {
  long status = 0;                                  // 0 when no response arrived
  std::multimap<std::string, std::string> headers;  // lower-case names (last response only)
  std::string body;
  std::string error;  // the transfer error (curl's message) when status == 0 or it was cut

  // The first value of header `name` (any case), if present.
  std::optional<std::string> Header(const std::string& name) const;
  // The body parsed as JSON; a `discarded` value when it is not JSON.
  nlohmann::json Json() const;
};

// One received piece of a streamed body.
struct Chunk {
  std::chrono::steady_clock::time_point time;
  std::string data;
};

struct StreamResponse : HttpResponse {
  std::chrono::steady_clock::time_point start;
  std::vector<Chunk> chunks;  // as received, with arrival times; body holds them joined
  bool aborted = false;       // stopped by the caller after abort_after_bytes
};

// The `data:` payloads of a text/event-stream body, in order (multi-line data joined with '\n').
std::vector<std::string> ParseSseData(const std::string& body);

// A blocking HTTP/1.1 client on libcurl easy for tests. One connection is kept alive between
// requests of the same client. Proxies from the environment are never used, and curl's
// "Expect: 100-continue" is off unless the caller sends an Expect header. Not thread-safe: use one
// client per thread.
class HttpClient {
 public:
  explicit HttpClient(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

  // Sends `method` to `url` with `body` (sent whenever non-empty, or for POST/PUT/PATCH).
  HttpResponse Request(const std::string& method, const std::string& url,
                       const std::string& body = "", const Headers& headers = {});
  HttpResponse Get(const std::string& url, const Headers& headers = {});
  // POST with Content-Type: application/json (unless `headers` sets one).
  HttpResponse PostJson(const std::string& url, const std::string& body,
                        const Headers& headers = {});
  HttpResponse PostJson(const std::string& url, const nlohmann::json& body,
                        const Headers& headers = {});

  // Like Request, recording each received piece with its arrival time. When abort_after_bytes
  // is set, the transfer is cut once that many body bytes arrived (the connection is closed).
  StreamResponse Stream(const std::string& method, const std::string& url,
                        const std::string& body = "", const Headers& headers = {},
                        std::optional<std::size_t> abort_after_bytes = std::nullopt);

 private:
  struct Transfer;
  void Perform(const std::string& method, const std::string& url, const std::string& body,
               const Headers& headers, Transfer& transfer);

  void* curl_;  // CURL*
  std::chrono::milliseconds timeout_;
};

}  // namespace staple::testing
