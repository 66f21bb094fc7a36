// Request paths and methods through the router (with Staple's own routes and error bodies), and
// the percent-decoding of a captured path segment. Input: the method, a newline, the path.
#include <nlohmann/json.hpp>
#include <string>

#include "api/errors.h"
#include "api/seed_request.h"
#include "fuzz_check.h"
#include "http/router.h"

namespace {

using staple::http::Request;
using staple::http::Response;
using staple::http::Router;
namespace net = staple::net;

net::awaitable<Response> Echo(Request& /*request*/) { co_return Response{}; }

// Runs to completion inside io_context::run(), while the caller's locals are alive.
net::awaitable<void> DispatchInto(const Router* router, Request* request, Response* response) {
  *response = co_await router->Dispatch(*request);
}

Router MakeRouter() {
  Router router(staple::api::FormatError);
  const auto echo = Echo;
  router.Add("POST", "/openai-completion", "/openai-completion", echo);
  router.Add("GET", "/users/{user_id}/messages", "/users/{user_id}/messages", echo);
  router.Add("DELETE", "/users/{user_id}/messages", "/users/{user_id}/messages", echo);
  router.Add("GET", "/healthz", "/healthz", echo);
  router.Add("POST", "/v1/chat/completions", "/v1/chat/completions", echo);
  router.Add("GET", "/v1/models/{model}", "/v1/models/{model}", echo);
  router.Add("GET", "/admin/keys/{id}/usage", "/admin/keys/{id}/usage", echo);
  return router;
}

void CheckDecode(std::string_view segment) {
  const std::string decoded = staple::api::DecodePathSegment(segment);
  FUZZ_CHECK(decoded.size() <= segment.size());
  if (segment.find('%') == std::string_view::npos) FUZZ_CHECK(decoded == segment);
  // Encoding every byte and decoding again gives the decoded text back.
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string encoded;
  for (const char c : decoded) {
    const auto byte = static_cast<unsigned char>(c);
    encoded += '%';
    encoded += kHex[byte >> 4];
    encoded += kHex[byte & 0xF];
  }
  FUZZ_CHECK(staple::api::DecodePathSegment(encoded) == decoded);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Router router = MakeRouter();
  const auto text = staple::fuzz::AsText(data, size);
  const auto newline = text.find('\n');
  Request request;
  request.method = std::string(text.substr(0, newline));
  request.path = newline == std::string_view::npos ? "" : std::string(text.substr(newline + 1));
  request.target = request.path;

  net::io_context io;
  Response response;
  net::co_spawn(io, DispatchInto(&router, &request, &response), [](std::exception_ptr error) {
    if (error) std::rethrow_exception(error);
  });
  io.run();

  FUZZ_CHECK(response.status == 200 || response.status == 404 || response.status == 405);
  FUZZ_CHECK(request.route < router.route_labels().size());
  if (response.status == 404) FUZZ_CHECK(request.route == Router::kOtherRoute);
  if (response.status != 200) {
    // Error bodies are valid JSON whatever bytes the path holds.
    FUZZ_CHECK(!nlohmann::json::parse(response.body, nullptr, false).is_discarded());
  }
  if (response.status == 405) FUZZ_CHECK(response.headers.Get("Allow").has_value());
  if (response.status == 200) {
    const std::string& label = router.route_labels()[request.route];
    std::size_t captures = 0;
    for (const char c : label) captures += c == '{' ? 1 : 0;
    FUZZ_CHECK(request.path_params.size() == captures);
    // The captures, put back in the pattern, give the path (without its leading '/').
    std::string rebuilt;
    std::size_t next = 0;
    for (std::size_t i = 0; i < label.size(); ++i) {
      if (label[i] == '{') {
        const std::string& param = request.path_params[next++];
        FUZZ_CHECK(!param.empty() && param.find('/') == std::string::npos);
        rebuilt += param;
        i = label.find('}', i);
      } else {
        rebuilt += label[i];
      }
    }
    const bool rooted = !request.path.empty() && request.path.front() == '/';
    FUZZ_CHECK(rebuilt == (rooted ? request.path : "/" + request.path));
  }
  for (const auto& param : request.path_params) CheckDecode(param);
  CheckDecode(request.path);
  return 0;
}
