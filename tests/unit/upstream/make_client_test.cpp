#include "upstream/make_client.h"

#include <gtest/gtest.h>

#include "scoped_env.h"
#include "upstream/asio_client.h"
#include "upstream/curl_client.h"

namespace staple::upstream {
namespace {

// Clears every proxy variable libcurl reads for the life of the object.
class NoProxies {
 public:
  NoProxies()
      : https_("https_proxy", ""),
        https_upper_("HTTPS_PROXY", ""),
        http_("http_proxy", ""),
        all_("all_proxy", ""),
        all_upper_("ALL_PROXY", "") {}

 private:
  test::ScopedEnv https_, https_upper_, http_, all_, all_upper_;
};

TEST(MakeClientTest, KindsReadAndPrintAsTheVariableSpellsThem) {
  for (const char* text : {"auto", "asio", "curl"}) {
    auto kind = ParseClientKind(text);
    ASSERT_TRUE(kind.has_value()) << text;
    EXPECT_EQ(ClientKindName(*kind), text);
  }
  EXPECT_FALSE(ParseClientKind("libcurl").has_value());
  EXPECT_FALSE(ParseClientKind("").has_value());
}

TEST(MakeClientTest, AutoIsAsioWithoutAProxy) {
  NoProxies none;
  EXPECT_FALSE(ProxyConfigured());
  EXPECT_EQ(ResolveClientKind(ClientKind::kAuto, "https://api.openai.com/v1"), ClientKind::kAsio);
  EXPECT_EQ(ResolveClientKind(ClientKind::kAuto, "http://127.0.0.1:8000/v1"), ClientKind::kAsio);
  EXPECT_EQ(ResolveClientKind(ClientKind::kAuto, "http://[::1]:8000"), ClientKind::kAsio);
  Settings settings;
  settings.base_url = "http://127.0.0.1:9/v1";
  EXPECT_NE(dynamic_cast<AsioClient*>(MakeClient(settings, ClientKind::kAuto).get()), nullptr);
}

TEST(MakeClientTest, AutoIsCurlWithAProxyOrAUrlOnlyLibcurlTakes) {
  NoProxies none;
  {
    test::ScopedEnv proxy("HTTPS_PROXY", "http://proxy.internal:3128");
    EXPECT_TRUE(ProxyConfigured());
    EXPECT_EQ(ResolveClientKind(ClientKind::kAuto, "https://api.openai.com/v1"), ClientKind::kCurl);
    Settings settings;
    settings.base_url = "https://api.openai.com/v1";
    EXPECT_NE(dynamic_cast<CurlClient*>(MakeClient(settings, ClientKind::kAuto).get()), nullptr);
    // A kind named outright stands.
    EXPECT_EQ(ResolveClientKind(ClientKind::kAsio, "https://api.openai.com/v1"), ClientKind::kAsio);
  }
  EXPECT_EQ(ResolveClientKind(ClientKind::kAuto, "https://user:secret@example.com/v1"),
            ClientKind::kCurl);
  EXPECT_EQ(ResolveClientKind(ClientKind::kAuto, "https://example.com/v1?api-version=1"),
            ClientKind::kCurl);
  EXPECT_EQ(ResolveClientKind(ClientKind::kCurl, "http://127.0.0.1:8000"), ClientKind::kCurl);
}

TEST(MakeClientTest, AsioClientSupportsPlainAndTlsUrlsWithAHost) {
  EXPECT_TRUE(AsioClient::Supports("http://localhost:8000/v1"));
  EXPECT_TRUE(AsioClient::Supports("https://api.openai.com/v1"));
  EXPECT_TRUE(AsioClient::Supports("HTTPS://API.OPENAI.COM"));
  EXPECT_FALSE(AsioClient::Supports("ftp://example.com"));
  EXPECT_FALSE(AsioClient::Supports("http://"));
  EXPECT_FALSE(AsioClient::Supports("http://example.com/#part"));
  EXPECT_FALSE(AsioClient::Supports("http://sk-key:[/"));
}

}  // namespace
}  // namespace staple::upstream
