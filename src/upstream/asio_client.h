#pragma once

#include <memory>
#include <string>

#include "common/net.h"
#include "upstream/client.h"

namespace staple::upstream {

struct AsioClientState;

// The Client over Boost.Beast: HTTP/1.1 with keep-alive, plain or TLS (see client.h for the
// contract, which CurlClient meets as well; tests/unit/upstream runs one suite against both).
//
// Why it exists: libcurl's multi interface costs about a fifth of a proxied request's CPU here
// and its connection cache is walked per transfer, so its cost grows with the connections open
// (docs/DESIGN.md §9). This client does only what an OpenAI-compatible upstream needs.
//
// Threads and pools: one AsioClient serves every I/O thread. Each io_context keeps its own idle
// connections (an Asio service of that io_context, shared by every AsioClient): per origin
// (scheme, host, port) a stack whose take and give cost O(1) whatever the number of connections.
// A connection idle for longer than 50 s, or one the peer closed (checked with a non-blocking
// peek when it is taken), is not used again. A request whose pooled connection turns out to be
// closed before any response byte is sent again on a new connection, which is not counted as an
// attempt: the server never saw it. Host names are resolved on Asio's resolver thread, at most
// once at a time per origin and io_context, and kept for 30 s; a lookup is bounded by the system
// resolver's own timeouts, not by connect_timeout.
//
// TLS: OpenSSL through Asio, the system's trusted roots (set_default_verify_paths, so
// SSL_CERT_FILE and SSL_CERT_DIR apply), peer verification, the host name checked against the
// certificate, SNI; TLS 1.2 or later.
//
// Deadlines, retries, lifetime and shutdown: as CurlClient documents them (curl_client.h), with
// connect_timeout covering connect and the TLS handshake, and one difference: when a retry of a
// 429 or 5xx runs out of the total deadline, that earlier answer is returned (for a stream, with
// its body unread until then), not a timeout. A stream reads only when Next() is
// awaited, so a slow reader holds the upstream back through TCP flow control and
// Settings::stream_buffer_bytes does not apply.
//
// Not supported: proxies (HTTPS_PROXY and the like), HTTP/2, a base URL with user info, a query
// or a fragment. MakeClient picks CurlClient for those.
class AsioClient final : public Client {
 public:
  // A base URL this client cannot use still constructs; every call then fails with
  // kInvalidArgument (Supports() tells in advance).
  explicit AsioClient(Settings settings);
  ~AsioClient() override;
  AsioClient(const AsioClient&) = delete;
  AsioClient& operator=(const AsioClient&) = delete;

  net::awaitable<Result<Response>> Send(Request request) override;
  net::awaitable<Result<std::unique_ptr<Stream>>> OpenStream(Request request) override;

  void Shutdown() override;

  // Whether this client can reach `base_url`: http:// or https://, a host, no user info, query
  // or fragment.
  static bool Supports(const std::string& base_url);

 private:
  std::shared_ptr<AsioClientState> state_;
};

}  // namespace staple::upstream
