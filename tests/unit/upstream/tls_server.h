#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "common/net.h"
// clang-format off
#include <boost/asio/ssl.hpp>
// clang-format on

// A TLS upstream for the Asio client's tests: a certificate made at run time and a small HTTPS
// server on 127.0.0.1 that answers every request with {"tls":true}.
namespace staple::upstream::test {

// A self-signed certificate (P-256, SHA-256, valid for an hour) and its key, both PEM.
struct TlsIdentity {
  std::string certificate_pem;
  std::string key_pem;
};

// `alt_names` is the certificate's subjectAltName in OpenSSL's notation, e.g.
// "DNS:localhost,IP:127.0.0.1". Throws std::runtime_error when OpenSSL fails.
TlsIdentity MakeSelfSigned(const std::string& alt_names);

class TlsServer {
 public:
  explicit TlsServer(const TlsIdentity& identity);
  ~TlsServer();  // stops the thread; open connections are closed
  TlsServer(const TlsServer&) = delete;
  TlsServer& operator=(const TlsServer&) = delete;

  std::uint16_t port() const { return port_; }
  int handshakes() const { return handshakes_.load(); }  // completed ones
  int requests() const { return requests_.load(); }
  std::string server_name() const;  // the SNI of the last handshake ("" without one)

 private:
  net::awaitable<void> Accept();
  net::awaitable<void> Serve(net::ip::tcp::socket socket);

  net::io_context io_;
  net::ssl::context context_;
  net::ip::tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::atomic<int> handshakes_{0};
  std::atomic<int> requests_{0};
  mutable std::mutex mutex_;
  std::string server_name_;  // guarded by mutex_
  std::thread thread_;
};

}  // namespace staple::upstream::test
