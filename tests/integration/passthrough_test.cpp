// /v1 calls Staple does not handle itself (embeddings, models/{id}, moderations, files, ...) are
// passed through to the upstream: method, path, query, body and Content-Type as sent, the
// operator's key instead of the client's, the answer handed back with its status; limits and
// client keys apply first.

#include <gtest/gtest.h>

#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

constexpr const char* kAdminKey = "admin-key-for-tests-0123456789-abcdefgh";

class PassThroughTest : public GatewayTest {
 protected:
  // The one recorded request whose target starts with `prefix`; fails the test unless there is
  // exactly one.
  json OnlyRequestTo(const std::string& prefix) {
    std::vector<json> found;
    for (const auto& request : fake_.requests()) {
      if (request.value("path", "").rfind(prefix, 0) == 0) found.push_back(request);
    }
    EXPECT_EQ(found.size(), 1u) << fake_.requests().dump();
    return found.empty() ? json::object() : found[0];
  }

  void SetFault(const std::string& markers) {
    HttpResponse set = client_.Request("PUT", fake_.root_url() + "/_fake/fault", markers, {});
    ASSERT_EQ(set.status, 200) << set.body;
  }
};

TEST_F(PassThroughTest, ACallIsForwardedAsSentWithTheOperatorsKeyOnly) {
  auto staple = StartStaple();
  HttpResponse answer = client_.Request("POST", staple->url() + "/v1/moderations?model=omni&x=%2F",
                                        R"({"input":"hello"})",
                                        {{"Content-Type", "application/json"},
                                         {"Authorization", "Bearer the-clients-own-key"},
                                         {"OpenAI-Beta", "assistants=v2"},
                                         {"Cookie", "session=1"}});
  ASSERT_EQ(answer.status, 200) << answer.body;
  const json echo = answer.Json();
  EXPECT_EQ(echo.value("method", ""), "POST") << answer.body;
  EXPECT_EQ(echo.value("target", ""), "/v1/moderations?model=omni&x=%2F") << answer.body;
  EXPECT_EQ(echo.value("body_head", ""), R"({"input":"hello"})") << answer.body;

  const json forwarded = OnlyRequestTo("/v1/moderations");
  const json headers = forwarded.value("headers", json::object());
  EXPECT_EQ(headers.value("authorization", ""), std::string("Bearer ") + kTestApiKey);
  EXPECT_EQ(headers.value("openai-beta", ""), "assistants=v2");
  EXPECT_FALSE(headers.contains("cookie")) << headers.dump();
  EXPECT_EQ(forwarded.dump().find("the-clients-own-key"), std::string::npos);
  EXPECT_EQ(answer.body.find(kTestApiKey), std::string::npos);

  // Other methods, and a multipart upload's body and boundary, arrive unchanged.
  HttpResponse deleted = client_.Request("DELETE", staple->url() + "/v1/files/file-abc");
  ASSERT_EQ(deleted.status, 200) << deleted.body;
  EXPECT_EQ(deleted.Json().value("method", ""), "DELETE");
  EXPECT_EQ(deleted.Json().value("target", ""), "/v1/files/file-abc");
  const std::string boundary = "----staple-test-boundary";
  std::string upload = "--" + boundary +
                       "\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--" +
                       boundary +
                       "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n"
                       "Content-Type: application/octet-stream\r\n\r\n";
  upload += std::string(200'000, 'x') + "\r\n--" + boundary + "--\r\n";
  const std::string type = "multipart/form-data; boundary=" + boundary;
  HttpResponse uploaded =
      client_.Request("POST", staple->url() + "/v1/files", upload, {{"Content-Type", type}});
  ASSERT_EQ(uploaded.status, 200) << uploaded.body;
  EXPECT_EQ(uploaded.Json().value("content_type", ""), type);
  EXPECT_EQ(uploaded.Json().value("body_bytes", 0u), upload.size());
}

TEST_F(PassThroughTest, EmbeddingsAndModelLookupsWork) {
  auto staple = StartStaple();
  HttpResponse embedded =
      client_.PostJson(staple->url() + "/v1/embeddings",
                       json{{"model", "text-embedding-3-small"}, {"input", {"one", "two"}}});
  ASSERT_EQ(embedded.status, 200) << embedded.body;
  EXPECT_EQ(embedded.Json()["data"].size(), 2u);
  EXPECT_EQ(embedded.Json()["data"][1]["embedding"].size(), 8u);

  HttpResponse model = client_.Get(staple->url() + "/v1/models/gpt-4o-mini");
  ASSERT_EQ(model.status, 200) << model.body;
  EXPECT_EQ(model.Json().value("id", ""), "gpt-4o-mini");
  HttpResponse missing = client_.Get(staple->url() + "/v1/models/not-a-model");
  EXPECT_EQ(missing.status, 404) << missing.body;
  EXPECT_TRUE(missing.Json()["error"].is_object()) << missing.body;

  // Staple's own routes keep their methods: a GET of the chat route is not forwarded.
  HttpResponse wrong = client_.Get(staple->url() + "/v1/chat/completions");
  EXPECT_EQ(wrong.status, 405) << wrong.body;
  EXPECT_TRUE(fake_.requests_to("GET", "/v1/chat/completions").empty());
}

TEST_F(PassThroughTest, NothingClimbsOutOfV1OrIntoStaplesOwnApis) {
  auto staple = StartStaple();
  // Dot segments (curl sends percent-encoded ones as they are) could reach other paths of the
  // upstream's host with the gateway's key.
  for (const std::string path :
       {"/v1/files/%2e%2e/%2E%2E/dashboard", "/v1/x/%2e/y", "/v1/files/..%2f..%2fadmin/%2e%2e"}) {
    HttpResponse refused = client_.Get(staple->url() + path);
    EXPECT_EQ(refused.status, 400) << path << ": " << refused.body;
    EXPECT_TRUE(refused.Json()["error"].is_object()) << refused.body;
  }
  // Subpaths of the APIs whose state Staple keeps are its own 404s, not the upstream's.
  for (const std::string path :
       {"/v1/responses/resp_1/cancel", "/v1/conversations/c/x/y", "/v1/chat/completions/abc"}) {
    HttpResponse unknown =
        client_.Request("POST", staple->url() + path, "{}", {{"Content-Type", "application/json"}});
    EXPECT_EQ(unknown.status, 404) << path << ": " << unknown.body;
  }
  EXPECT_TRUE(fake_.requests().empty()) << fake_.requests().dump();
}

TEST_F(PassThroughTest, UpstreamFailuresAnswerInOpenAIsShapeAndAreLogged) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_RETRIES", "0"}, {"STAPLE_LOG_FORMAT", "json"}});
  SetFault("FAULT:status=503");
  HttpResponse busy =
      client_.PostJson(staple->url() + "/v1/embeddings", json{{"model", "e"}, {"input", "x"}},
                       {{"X-Request-Id", "pt-503"}});
  EXPECT_EQ(busy.status, 503) << busy.body;
  EXPECT_TRUE(busy.Json()["error"].is_object()) << busy.body;
  SetFault("FAULT:drop");
  HttpResponse dropped =
      client_.PostJson(staple->url() + "/v1/embeddings", json{{"model", "e"}, {"input", "x"}},
                       {{"X-Request-Id", "pt-drop"}});
  EXPECT_EQ(dropped.status, 502) << dropped.body;
  EXPECT_EQ(dropped.Json()["error"].value("type", ""), "upstream_error") << dropped.body;
  for (const char* id : {"pt-503", "pt-drop"}) {
    bool warned = false;
    WaitUntil(
        [&] {
          for (const auto& text : SplitLines(staple->Stderr())) {
            const auto line = json::parse(text, nullptr, false);
            if (line.is_object() && line.value("request_id", "") == id &&
                line.value("level", "") == "warn" && !line.value("error", "").empty()) {
              warned = true;
            }
          }
          return warned;
        },
        std::chrono::seconds(5));
    EXPECT_TRUE(warned) << id << ": " << staple->Stderr();
  }
  EXPECT_EQ(staple->Stderr().find(kTestApiKey), std::string::npos);
}

TEST_F(PassThroughTest, ClientKeysAndTheirModelsApplyBeforeAnythingIsForwarded) {
  auto staple = StartStaple({{"STAPLE_AUTH", "keys"}, {"STAPLE_ADMIN_KEY", kAdminKey}});
  HttpResponse anonymous =
      client_.PostJson(staple->url() + "/v1/embeddings", json{{"model", "e"}, {"input", "x"}});
  EXPECT_EQ(anonymous.status, 401) << anonymous.body;

  HttpResponse created = client_.Request("POST", staple->url() + "/admin/keys",
                                         R"({"name":"narrow","models":["gpt-4o-mini"]})",
                                         {{"Authorization", std::string("Bearer ") + kAdminKey},
                                          {"Content-Type", "application/json"}});
  ASSERT_EQ(created.status, 201) << created.body;
  const Headers with_key = {{"Authorization", "Bearer " + created.Json()["key"].get<std::string>()},
                            {"Content-Type", "application/json"}};
  HttpResponse refused =
      client_.PostJson(staple->url() + "/v1/embeddings",
                       json{{"model", "text-embedding-3-small"}, {"input", "x"}}, with_key);
  EXPECT_EQ(refused.status, 403) << refused.body;
  EXPECT_EQ(refused.Json()["error"].value("code", ""), "model_not_allowed") << refused.body;
  HttpResponse hidden = client_.Get(staple->url() + "/v1/models/fake-model", with_key);
  EXPECT_EQ(hidden.status, 404) << hidden.body;
  HttpResponse allowed = client_.Get(staple->url() + "/v1/models/gpt-4o-mini", with_key);
  EXPECT_EQ(allowed.status, 200) << allowed.body;
  // Only the allowed lookup reached the upstream.
  EXPECT_EQ(fake_.requests().size(), 1u) << fake_.requests().dump();
}

}  // namespace
}  // namespace staple::testing
