#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/net.h"
#include "common/result.h"

namespace staple::upstream {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Settings {
  std::string base_url = "https://api.openai.com/v1";  // no trailing slash
  std::string api_key;                                 // empty: no Authorization header
  std::chrono::milliseconds connect_timeout{10'000};
  // Per attempt: request sent -> first response byte. For a non-streaming answer that byte comes
  // when the answer is complete; for a stream it is the time to the first token.
  std::chrono::milliseconds first_byte_timeout{60'000};
  std::chrono::milliseconds idle_timeout{60'000};  // between two chunks of a stream
  // A non-streaming exchange as a whole, and a stream until its response headers, retries
  // included.
  std::chrono::milliseconds total_timeout{120'000};
  // A stream as a whole, from the request to its last byte (a long answer streams for minutes).
  std::chrono::milliseconds stream_timeout{600'000};
  // Extra attempts after the first, on connect errors, 429 and 5xx. A request the upstream
  // received but did not answer within the first-byte timeout is not sent again: it may be at
  // work on it, and a second attempt would be paid twice.
  int max_retries = 2;
  std::chrono::milliseconds backoff_base{200};  // attempt n waits base * 2^(n-1), full jitter
  std::chrono::milliseconds backoff_max{2'000};
  std::size_t max_response_bytes = 16 * 1024 * 1024;  // non-streaming body limit
  std::size_t stream_buffer_bytes = 256 * 1024;  // paused above this until the reader catches up
  // A kept connection idle for at least this long is checked before it carries a request (one
  // recv with MSG_PEEK: did the server close it, or send bytes nobody asked for?); one given back
  // more recently is taken as it is. The check was one system call in eight of a proxied request,
  // servers close idle connections after seconds, and a request whose kept connection turns out
  // closed goes out again on a new one anyway. 0 checks every time. The Asio client only (libcurl
  // checks its connections its own way).
  std::chrono::milliseconds peek_idle_after{100};
};

// Cancels one exchange before it ends on its own (the loser of a hedged request). Used on the
// thread of the coroutine that runs the exchange; not thread-safe.
class Cancellation {
 public:
  // The exchange ends with kCancelled as soon as it can; so does a stream it already returned
  // (its Next() fails).
  void Cancel() {
    cancelled_ = true;
    if (hook_) std::exchange(hook_, nullptr)();
  }
  bool cancelled() const { return cancelled_; }
  // For Client implementations: what Cancel() runs (at once when already cancelled).
  void OnCancel(std::function<void()> hook) {
    if (cancelled_) {
      hook();
    } else {
      hook_ = std::move(hook);
    }
  }

 private:
  bool cancelled_ = false;
  std::function<void()> hook_;
};

struct Request {
  std::string method = "POST";
  std::string path;  // appended to base_url, e.g. "/chat/completions"
  std::string body;  // sent as application/json when non-empty
  Headers headers;   // extra request headers (never Authorization: the client adds the key)
  bool retry = true;
  // The first response byte comes only with the whole answer (a non-streaming completion that
  // may take minutes to generate): once the request is sent, no first-byte deadline applies and
  // only the total timeout bounds the wait. Send() only.
  bool answer_at_once = false;
  // The client's model name: what a Router picks upstreams by (and renames). "" for a request
  // that names no model; a plain client ignores it.
  std::string model;
  // The latest moment the exchange may end (for a stream: until its headers), when it is earlier
  // than the client's own total timeout: the rest of a deadline shared by several upstreams.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Lets the caller cancel this exchange while it runs; null: only shutdown cancels it.
  std::shared_ptr<Cancellation> cancellation;
};

struct Response {
  long status = 0;
  std::string content_type;
  Headers headers;  // response headers as received (lower-case names)
  std::string body;
  int attempts = 1;
  std::chrono::milliseconds elapsed{0};
  std::string upstream;  // the name of the upstream that answered ("" with a single upstream)
};

// A streaming response: the status and headers have arrived; the body is read chunk by chunk.
// Destroying it cancels the transfer. Not thread-safe: use from the coroutine that opened it.
class Stream {
 public:
  virtual ~Stream() = default;
  virtual long status() const = 0;
  virtual const std::string& content_type() const = 0;
  virtual const Headers& headers() const = 0;
  // Other upstreams that were sent the same request and cancelled once this one answered (a
  // hedged request's losers): they may have read the prompt.
  virtual std::uint32_t abandoned_attempts() const { return 0; }
  // The name of the upstream that answered ("" with a single upstream).
  virtual const std::string& upstream() const {
    static const std::string kNone;
    return kNone;
  }
  // The next body bytes as they arrived; std::nullopt at the end of the body. Errors: kTimeout
  // (idle timeout), kUnavailable (connection reset). While the caller does not call Next(), the
  // transfer pauses once stream_buffer_bytes are buffered.
  virtual net::awaitable<Result<std::optional<std::string>>> Next() = 0;
};

// An OpenAI-compatible HTTP client. Thread-safe: each I/O thread uses its own connection pool.
// Errors: kUnavailable (cannot connect, reset, TLS failure), kTimeout (a deadline passed),
// kCancelled (shutdown). An HTTP error status is not an Error: it is a Response with that status.
// No error message ever contains the API key.
class Client {
 public:
  virtual ~Client() = default;
  // Sends a request and reads the whole response, retrying per Settings when `request.retry`.
  virtual net::awaitable<Result<Response>> Send(Request request) = 0;
  // Sends a request and returns once the response headers arrived. Retries (per Settings) happen
  // only before the status is returned, never after body bytes were handed out.
  virtual net::awaitable<Result<std::unique_ptr<Stream>>> OpenStream(Request request) = 0;
  // Makes every call in flight, and every later one, end with kCancelled (at exit). Thread-safe.
  virtual void Shutdown() {}
};

}  // namespace staple::upstream
