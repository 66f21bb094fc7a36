#include "api/auth.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "api/admission.h"
#include "ratelimit/clock.h"
#include "ratelimit/memory/memory_rate_limiter.h"
#include "support/temp_dir.h"

// Client-key authentication without a server: the key registry over a SQLite file in a temporary
// directory, the in-memory limiter for failed attempts.
namespace staple::api {
namespace {

using nlohmann::json;

http::Request WithHeader(const std::string& name, const std::string& value) {
  http::Request request;
  request.method = "POST";
  request.path = "/v1/chat/completions";
  request.headers.Add(name, value);
  request.request_id = "r1";
  return request;
}

template <typename T>
net::awaitable<void> Keep(std::optional<T>* out, net::awaitable<T> task) {
  T value = co_await std::move(task);
  out->emplace(std::move(value));
}

TEST(PresentedSecretTest, BearerInAnyCaseOrXApiKey) {
  EXPECT_EQ(PresentedSecret(WithHeader("Authorization", "Bearer sk-staple-a")), "sk-staple-a");
  EXPECT_EQ(PresentedSecret(WithHeader("authorization", "bearer   sk-staple-b  ")), "sk-staple-b");
  EXPECT_EQ(PresentedSecret(WithHeader("X-API-Key", " sk-staple-c")), "sk-staple-c");
  EXPECT_EQ(PresentedSecret(WithHeader("Authorization", "Basic dXNlcjpwYXNz")), "");
  EXPECT_EQ(PresentedSecret(WithHeader("Authorization", "Bearer")), "");
  EXPECT_EQ(PresentedSecret(http::Request{}), "");
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = (dir_.path() / "keys.db").string();
    auto store = keys::OpenKeyStore("sqlite:///" + path, path);
    ASSERT_TRUE(store) << store.error().message;
    keys::KeyRecord record;
    record.id = keys::GenerateId();
    record.name = "test key";
    record.secret_hash = keys::HashSecret(secret_);
    record.created_at = 1;
    ASSERT_TRUE((*store)->Create(record).ok());
    registry_.emplace(std::move(store).value(), std::chrono::milliseconds(50));
    ASSERT_TRUE(registry_->Start().ok());
    auth_.emplace(*registry_, limiter_, AuthSettings{true, *ratelimit::ParseLimits("2/minute")});
  }
  void TearDown() override {
    if (registry_) registry_->Stop();
  }

  Authenticator::Outcome Run(const http::Request& request, ErrorStyle style) {
    net::io_context io;
    std::optional<Authenticator::Outcome> out;
    net::co_spawn(io, Keep(&out, auth_->Authenticate(request, "203.0.113.7", style)),
                  [](std::exception_ptr e) {
                    if (e) std::rethrow_exception(e);
                  });
    io.run();
    return std::move(*out);
  }

  testing::TempDir dir_;
  const std::string secret_ = keys::GenerateSecret();
  ratelimit::SystemClock clock_;
  ratelimit::MemoryRateLimiter limiter_{clock_, ratelimit::Strategy::kFixedWindow};
  std::optional<keys::KeyRegistry> registry_;
  std::optional<Authenticator> auth_;
};

TEST_F(AuthenticatorTest, AValidKeyIsAcceptedAndNamesItsRecord) {
  auto outcome = Run(WithHeader("Authorization", "Bearer " + secret_), ErrorStyle::kOpenAI);
  EXPECT_FALSE(outcome.rejection.has_value());
  ASSERT_NE(outcome.key, nullptr);
  EXPECT_EQ(outcome.key->record.name, "test key");
}

TEST_F(AuthenticatorTest, RefusalsHaveEachApisShapeAndNeverEchoTheKey) {
  auto openai = Run(WithHeader("Authorization", "Bearer sk-staple-wrong"), ErrorStyle::kOpenAI);
  ASSERT_TRUE(openai.rejection.has_value());
  EXPECT_EQ(openai.rejection->status, 401);
  EXPECT_EQ(json::parse(openai.rejection->body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(openai.rejection->body.find("sk-staple-wrong"), std::string::npos);
  EXPECT_EQ(openai.rejection->headers.Get("WWW-Authenticate"), "Bearer");

  auto seed = Run(http::Request{}, ErrorStyle::kSeed);
  ASSERT_TRUE(seed.rejection.has_value());
  EXPECT_EQ(json::parse(seed.rejection->body), json({{"error", "Invalid API key"}}));
}

TEST_F(AuthenticatorTest, PastTheFailureLimitNoKeyIsLookedAt) {
  for (int i = 0; i < 2; ++i) {
    auto refused = Run(WithHeader("X-API-Key", "sk-staple-guess"), ErrorStyle::kOpenAI);
    ASSERT_TRUE(refused.rejection.has_value());
    EXPECT_EQ(refused.rejection->status, 401) << i;
  }
  auto stopped = Run(WithHeader("X-API-Key", "sk-staple-guess"), ErrorStyle::kOpenAI);
  ASSERT_TRUE(stopped.rejection.has_value());
  EXPECT_EQ(stopped.rejection->status, 429);
  EXPECT_TRUE(stopped.rejection->headers.Get("Retry-After").has_value());
  // Even the right key: a guess that happened to be right must not be told apart.
  auto right = Run(WithHeader("X-API-Key", secret_), ErrorStyle::kOpenAI);
  ASSERT_TRUE(right.rejection.has_value());
  EXPECT_EQ(right.rejection->status, 429);
}

}  // namespace
}  // namespace staple::api

namespace staple::api {
namespace {

http::Request AddressedTo(const std::string& host) {
  http::Request request;
  request.headers.Add("Host", host);
  return request;
}

TEST(HostAllowedTest, LoopbackNamesAndAddressesWithAnyPort) {
  for (const char* host :
       {"localhost", "LOCALHOST:5000", "127.0.0.1", "127.0.0.1:5000", "127.8.9.10", "[::1]:5000",
        "[::1]", "app.localhost:5000", "localhost."}) {
    EXPECT_TRUE(HostAllowed(AddressedTo(host), {})) << host;
  }
  EXPECT_TRUE(HostAllowed(http::Request{}, {}));  // no Host (HTTP/1.0)
}

TEST(HostAllowedTest, OtherNamesOnlyWhenListed) {
  for (const char* host : {"evil.example", "evil.example:5000", "10.0.0.5", "[2001:db8::1]:5000",
                           "localhost.evil.example", "127.0.0.1.evil.example", ""}) {
    EXPECT_FALSE(HostAllowed(AddressedTo(host), {})) << host;
  }
  EXPECT_TRUE(HostAllowed(AddressedTo("Gateway.Internal:8080"), {"gateway.internal"}));
  EXPECT_FALSE(HostAllowed(AddressedTo("other.internal"), {"gateway.internal"}));
}

}  // namespace
}  // namespace staple::api
