#pragma once

#include <memory>

#include "common/net.h"
#include "upstream/client.h"

namespace staple::upstream {

struct CurlClientState;

// The Client over libcurl's multi interface (see client.h for the contract).
//
// Threads and pools: one CurlClient serves every I/O thread. Each io_context gets its own libcurl
// multi handle on first use (an Asio service of that io_context, shared by all CurlClients), so
// every I/O thread keeps its own keep-alive pool and HTTP/2 connections and no transfer ever
// crosses threads. Send() and OpenStream() must be awaited from a coroutine whose executor belongs
// to a net::io_context that is run by exactly one thread; nothing blocks and no thread is started
// (libcurl may resolve host names on a short-lived thread of its own).
//
// Deadlines: connect_timeout (libcurl); first_byte_timeout from the moment the request goes out on
// a ready connection (or connect_timeout + first_byte_timeout after the attempt started, if no
// connection became ready), except that a Request::answer_at_once has none once it is sent;
// total_timeout bounds a whole Send() including its retries; streams have no total deadline but
// idle_timeout between chunks.
//
// Retries (when Request::retry): on connect failures, resets and timeouts before any response byte,
// and on 429 and 5xx responses, up to max_retries more attempts with exponential backoff and full
// jitter, or the server's Retry-After when it is at most 4 * backoff_max (a longer Retry-After
// returns the response at once). The last 429/5xx is returned as a Response.
//
// Lifetime and shutdown:
// - Shutdown() (thread-safe) makes every Send, OpenStream and Stream::Next of this client that is
//   in flight or starts later end with kCancelled. Call it before the io_contexts are destroyed.
// - The client may be destroyed at any time; calls in flight keep what they need and finish (the
//   destructor calls Shutdown(), so they finish with kCancelled). Do not destroy it concurrently
//   with the destruction of an io_context that still runs one of its calls.
// - A Stream, like any Asio I/O object, must be destroyed before its io_context; a coroutine frame
//   destroyed by the io_context's destructor is fine. Destroying an io_context with requests in
//   flight frees them without resuming anyone.
// Typical order at exit: stop accepting, Shutdown(), stop and join the I/O threads, destroy the
// io_contexts, destroy the client.
class CurlClient final : public Client {
 public:
  // Initialises libcurl for the process (std::runtime_error if that fails).
  explicit CurlClient(Settings settings);
  ~CurlClient() override;
  CurlClient(const CurlClient&) = delete;
  CurlClient& operator=(const CurlClient&) = delete;

  net::awaitable<Result<Response>> Send(Request request) override;
  net::awaitable<Result<std::unique_ptr<Stream>>> OpenStream(Request request) override;

  void Shutdown() override;

 private:
  std::shared_ptr<CurlClientState> state_;
};

}  // namespace staple::upstream
