#pragma once

#include <curl/curl.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/net.h"
#include "common/result.h"
#include "upstream/client.h"
#include "upstream/request_head.h"

namespace staple::upstream {

class CurlMulti;

// One HTTP exchange on one libcurl easy handle, run by the CurlMulti of one io_context.
//
// Threading: used only on the thread that runs that io_context. libcurl calls the callbacks
// from inside CurlMulti's calls into libcurl (and from curl_easy_pause in TakeBuffered); they only
// record progress and wake the waiting coroutine with a posted completion. They never resume a
// coroutine inline, so coroutine code, which may cancel or destroy the transfer, never runs inside
// a libcurl callback.
//
// Ownership: shared by the coroutine that drives it and, while it runs, by its CurlMulti.
class CurlTransfer {
 public:
  using Clock = std::chrono::steady_clock;

  enum class Mode {
    kCollect,  // the whole body is kept; a body over `body_limit` fails the exchange (kUpstream)
    kStream,   // the body is handed out as it arrives; above `body_limit` buffered the transfer
               // pauses
  };

  struct Options {
    Mode mode = Mode::kCollect;
    std::size_t body_limit = 0;
    std::chrono::milliseconds curl_timeout{0};  // libcurl's whole-transfer limit; 0: none
  };

  // Builds the easy handle for `request` to `settings.base_url`. Errors: kInvalidArgument (a method
  // or header that cannot be sent as given), kInternal (libcurl refused to set up the handle).
  static Result<std::shared_ptr<CurlTransfer>> Create(net::any_io_executor executor,
                                                      const Settings& settings, Request request,
                                                      const Options& options);
  ~CurlTransfer();
  CurlTransfer(const CurlTransfer&) = delete;
  CurlTransfer& operator=(const CurlTransfer&) = delete;

  CURL* easy() const { return easy_; }

  // Progress so far. A transfer is finished once libcurl completed it, it was cancelled, or its
  // CurlMulti went away; failure() then tells whether it failed.
  std::optional<Clock::time_point> request_sent_at() const { return request_sent_at_; }
  bool first_byte() const { return first_byte_; }
  bool headers_complete() const { return headers_complete_; }
  bool finished() const { return finished_; }
  const std::optional<Error>& failure() const { return failure_; }
  // Whether the failure happened before any response byte arrived and another attempt may succeed
  // (cannot connect, reset, no answer in time).
  bool retryable() const { return retryable_; }
  // When data last arrived (or the reader last made room for it); drives the idle timeout.
  Clock::time_point last_activity() const { return last_activity_; }

  long status() const { return status_; }
  const std::string& content_type() const { return content_type_; }
  const Headers& headers() const { return headers_; }
  Headers& headers() { return headers_; }

  // kCollect: the body received so far. kStream: the bytes not handed out yet.
  std::string& body() { return body_; }
  // kStream: hands out the buffered bytes and resumes a transfer paused on a full buffer. libcurl
  // may deliver bytes it kept back before this returns; they wait for the next call.
  std::string TakeBuffered();

  // Stops the exchange now (the connection is closed unless libcurl can keep it) and finishes it
  // with `why`. No effect once finished.
  void Cancel(Error why, bool retryable);

  // Suspends until something changes (bytes, headers, completion, cancellation) or `deadline`
  // passes. May wake early: callers re-check the state in a loop. One waiter at a time.
  net::awaitable<void> WaitUntil(Clock::time_point deadline);

  // Called by CurlMulti on its thread.
  void OnStarted(CurlMulti* multi);
  void OnDone(CURLcode code);  // already removed from the multi handle
  void OnAbandoned();          // the io_context is going away; nobody is resumed

 private:
  CurlTransfer(net::any_io_executor executor, const Options& options, std::string redact);
  Status Configure(const Settings& settings, Request request);

  static std::size_t HeaderCallback(char* data, std::size_t size, std::size_t count, void* self);
  static std::size_t WriteCallback(char* data, std::size_t size, std::size_t count, void* self);
  static int PrereqCallback(void* self, char* remote_ip, char* local_ip, int remote_port,
                            int local_port);
  std::size_t OnHeader(std::string_view line);
  std::size_t OnBody(const char* data, std::size_t size);

  void Finish(Error failure, bool retryable);
  void Wake();

  // Constant after construction.
  const Options options_;
  const std::string redact_;  // the API key, removed from any error text
  CURL* easy_ = nullptr;
  curl_slist* request_headers_ = nullptr;
  std::string url_;
  std::string request_body_;
  char error_text_[CURL_ERROR_SIZE] = {};

  // Progress, written by the libcurl callbacks and CurlMulti, read by the driving coroutine.
  CurlMulti* multi_ = nullptr;  // set while libcurl runs the transfer
  std::optional<Clock::time_point> request_sent_at_;
  bool first_byte_ = false;
  bool headers_complete_ = false;
  bool paused_ = false;
  bool finished_ = false;
  bool libcurl_failed_ = false;  // OnDone saw an error code: the handle is not pooled again
  bool retryable_ = false;
  std::optional<Error> failure_;
  Clock::time_point last_activity_;
  long status_ = 0;
  std::string content_type_;
  Headers headers_;
  std::string body_;

  // Wakes the coroutine in WaitUntil: its expiry is the deadline, cancel() is the signal.
  net::steady_timer wake_;
  bool waiting_ = false;
};

}  // namespace staple::upstream
