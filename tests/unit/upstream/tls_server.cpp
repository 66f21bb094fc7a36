#include "tls_server.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <memory>
#include <stdexcept>

#include "test_server.h"

namespace staple::upstream::test {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

template <typename T, void (*Free)(T*)>
using Owned = std::unique_ptr<T, std::integral_constant<decltype(Free), Free>>;

void Check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("OpenSSL: ") + what);
}

std::string Pem(const std::function<int(BIO*)>& write) {
  Owned<BIO, BIO_free_all> bio(BIO_new(BIO_s_mem()));
  Check(bio != nullptr && write(bio.get()) == 1, "PEM_write");
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(size));
}

void AddExtension(X509* certificate, int nid, const std::string& value) {
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, certificate, certificate, nullptr, nullptr, 0);
  Owned<X509_EXTENSION, X509_EXTENSION_free> extension(
      X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str()));
  Check(extension != nullptr, "X509V3_EXT_conf_nid");
  Check(X509_add_ext(certificate, extension.get(), -1) == 1, "X509_add_ext");
}

}  // namespace

TlsIdentity MakeSelfSigned(const std::string& alt_names) {
  Owned<EVP_PKEY, EVP_PKEY_free> key(EVP_EC_gen("P-256"));
  Check(key != nullptr, "EVP_EC_gen");
  Owned<X509, X509_free> certificate(X509_new());
  Check(certificate != nullptr, "X509_new");
  X509* cert = certificate.get();
  Check(X509_set_version(cert, 2) == 1, "X509_set_version");
  Check(ASN1_INTEGER_set(X509_get_serialNumber(cert), 1) == 1, "serial");
  Check(X509_gmtime_adj(X509_getm_notBefore(cert), -60) != nullptr, "notBefore");
  Check(X509_gmtime_adj(X509_getm_notAfter(cert), 3600) != nullptr, "notAfter");
  Check(X509_set_pubkey(cert, key.get()) == 1, "X509_set_pubkey");
  X509_NAME* name = X509_get_subject_name(cert);
  const std::string common_name = "staple test upstream";
  Check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                   -1, 0) == 1,
        "CN");
  Check(X509_set_issuer_name(cert, name) == 1, "issuer");
  // Its own trust anchor, as `openssl req -x509` makes them.
  AddExtension(cert, NID_basic_constraints, "critical,CA:TRUE");
  AddExtension(cert, NID_subject_alt_name, alt_names);
  Check(X509_sign(cert, key.get(), EVP_sha256()) > 0, "X509_sign");

  TlsIdentity identity;
  identity.certificate_pem = Pem([cert](BIO* bio) { return PEM_write_bio_X509(bio, cert); });
  identity.key_pem = Pem([&key](BIO* bio) {
    return PEM_write_bio_PrivateKey(bio, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  });
  return identity;
}

TlsServer::TlsServer(const TlsIdentity& identity)
    : context_(net::ssl::context::tls_server),
      acceptor_(io_, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)) {
  context_.use_certificate_chain(net::buffer(identity.certificate_pem));
  context_.use_private_key(net::buffer(identity.key_pem), net::ssl::context::pem);
  port_ = acceptor_.local_endpoint().port();
  net::co_spawn(io_, Accept(), ReportException);
  thread_ = std::thread([this] { io_.run(); });
}

TlsServer::~TlsServer() {
  io_.stop();
  thread_.join();
}

std::string TlsServer::server_name() const {
  std::lock_guard lock(mutex_);
  return server_name_;
}

net::awaitable<void> TlsServer::Accept() {
  for (;;) {
    tcp::socket socket = co_await acceptor_.async_accept(net::use_awaitable);
    net::co_spawn(io_, Serve(std::move(socket)), ReportException);
  }
}

net::awaitable<void> TlsServer::Serve(tcp::socket socket) {
  net::ssl::stream<tcp::socket> stream(std::move(socket), context_);
  beast::error_code error;
  co_await stream.async_handshake(net::ssl::stream_base::server,
                                  net::redirect_error(net::use_awaitable, error));
  if (error) co_return;  // the client refused the certificate
  handshakes_.fetch_add(1);
  {
    const char* name = SSL_get_servername(stream.native_handle(), TLSEXT_NAMETYPE_host_name);
    std::lock_guard lock(mutex_);
    server_name_ = name != nullptr ? name : "";
  }
  beast::flat_buffer buffer;
  for (;;) {
    http::request<http::string_body> request;
    co_await http::async_read(stream, buffer, request,
                              net::redirect_error(net::use_awaitable, error));
    if (error) co_return;
    requests_.fetch_add(1);
    http::response<http::string_body> response(http::status::ok, 11);
    response.set(http::field::content_type, "application/json");
    response.body() = R"({"tls":true})";
    response.keep_alive(request.keep_alive());
    response.prepare_payload();
    co_await http::async_write(stream, response, net::redirect_error(net::use_awaitable, error));
    if (error) co_return;
  }
}

}  // namespace staple::upstream::test
