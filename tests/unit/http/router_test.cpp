#include "http/router.h"

#include <gtest/gtest.h>

namespace staple::http {
namespace {

Response Error(int status, std::string_view message, std::string_view) {
  return JsonResponse(status, {{"error", message}});
}

Response RunDispatch(const Router& router, Request& request) {
  net::io_context io;
  Response result;
  net::co_spawn(
      io, [&]() -> net::awaitable<void> { result = co_await router.Dispatch(request); },
      net::detached);
  io.run();
  return result;
}

Router MakeRouter() {
  Router router(Error);
  router.Add("POST", "/openai-completion", "/openai-completion",
             [](Request&) -> net::awaitable<Response> {
               co_return JsonResponse(200, {{"ok", 1}});
             });
  router.Add("GET", "/users/{user_id}/messages", "messages",
             [](Request& r) -> net::awaitable<Response> {
               co_return JsonResponse(200, {{"user", r.path_params.at(0)}});
             });
  router.Add("DELETE", "/users/{user_id}/messages", "messages",
             [](Request&) -> net::awaitable<Response> { co_return JsonResponse(200, {}); });
  return router;
}

TEST(RouterTest, DispatchesByMethodAndPath) {
  auto router = MakeRouter();
  Request request;
  request.method = "POST";
  request.path = "/openai-completion";
  auto response = RunDispatch(router, request);
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(router.route_labels().at(request.route), "/openai-completion");
}

TEST(RouterTest, CapturesPathParameters) {
  auto router = MakeRouter();
  Request request;
  request.method = "GET";
  request.path = "/users/abc-123/messages";
  auto response = RunDispatch(router, request);
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(nlohmann::json::parse(response.body)["user"], "abc-123");
}

TEST(RouterTest, WrongMethodIs405WithAllow) {
  auto router = MakeRouter();
  Request request;
  request.method = "PUT";
  request.path = "/users/x/messages";
  auto response = RunDispatch(router, request);
  EXPECT_EQ(response.status, 405);
  EXPECT_EQ(response.headers.Get("Allow").value_or(""), "GET, DELETE");
}

TEST(RouterTest, MatchesWithOrWithoutTheLeadingSlash) {
  auto router = MakeRouter();
  Request request;
  request.method = "GET";
  request.path = "users/u%2F1/messages";
  auto response = RunDispatch(router, request);
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(nlohmann::json::parse(response.body).at("user"), "u%2F1");
}

TEST(RouterTest, UnknownPathIs404) {
  auto router = MakeRouter();
  for (std::string path :
       {"/", "", "/openai-completion/extra", "/openai-completion/", "/users//messages",
        "/users/x/messages/", "/users/x", "users/x/messages/y", "/nope", "//openai-completion"}) {
    Request request;
    request.method = "GET";
    request.path = path;
    request.route = 99;
    auto response = RunDispatch(router, request);
    EXPECT_EQ(response.status, 404) << path;
    EXPECT_EQ(request.route, Router::kOtherRoute);
  }
}

TEST(RouterTest, TheFallbackTakesUnmatchedPathsUnderItsPrefixOnly) {
  auto router = MakeRouter();
  router.Add("POST", "/v1/chat/completions", "/v1/chat/completions",
             [](Request&) -> net::awaitable<Response> { co_return JsonResponse(200, {}); });
  router.SetFallback("/v1/", "/v1/*", [](Request& r) -> net::awaitable<Response> {
    co_return JsonResponse(202, {{"method", r.method}});
  });
  const auto dispatch = [&router](std::string method, std::string path) {
    Request request;
    request.method = std::move(method);
    request.path = std::move(path);
    auto response = RunDispatch(router, request);
    return std::make_pair(response.status, router.route_labels().at(request.route));
  };
  EXPECT_EQ(dispatch("POST", "/v1/embeddings"), std::make_pair(202, std::string("/v1/*")));
  EXPECT_EQ(dispatch("DELETE", "/v1/files/f-1"), std::make_pair(202, std::string("/v1/*")));
  // A path a route matches keeps its 405 for other methods; paths outside the prefix their 404.
  EXPECT_EQ(dispatch("GET", "/v1/chat/completions").first, 405);
  EXPECT_EQ(dispatch("POST", "/v1/chat/completions").first, 200);
  EXPECT_EQ(dispatch("GET", "/v1").first, 404);
  EXPECT_EQ(dispatch("GET", "/nope").first, 404);
}

TEST(RouterTest, InternsRouteLabels) {
  auto router = MakeRouter();
  // "other" first, then each distinct label once, in the order of first use.
  EXPECT_EQ(router.route_labels(),
            (std::vector<std::string>{"other", "/openai-completion", "messages"}));
  EXPECT_EQ(router.route_labels()[Router::kOtherRoute], "other");

  Request get;
  get.method = "GET";
  get.path = "/users/x/messages";
  RunDispatch(router, get);
  Request remove;
  remove.method = "DELETE";
  remove.path = "/users/x/messages";
  RunDispatch(router, remove);
  EXPECT_EQ(get.route, 2u);
  EXPECT_EQ(remove.route, 2u);
}

TEST(HeadersTest, NamesAreCaseInsensitive) {
  Headers headers;
  headers.Add("Content-Type", "application/json");
  EXPECT_EQ(headers.Get("content-type").value_or(""), "application/json");
  headers.Set("CONTENT-TYPE", "text/plain");
  EXPECT_EQ(headers.fields().size(), 1u);
  EXPECT_EQ(headers.Get("Content-Type").value_or(""), "text/plain");
  EXPECT_FALSE(headers.Get("X-Missing").has_value());
}

}  // namespace
}  // namespace staple::http
