#include "api/admission.h"

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>

#include "ratelimit/clock.h"
#include "ratelimit/memory/memory_rate_limiter.h"

// The client identity the limits count: IPv6 clients per network prefix, IPv4-mapped addresses as
// IPv4, for the peer address and for the X-Forwarded-For address alike.
namespace staple::api {
namespace {

TEST(ClientKeyTest, Ipv4AddressesAreKeptAsTheyAre) {
  EXPECT_EQ(ClientKey("203.0.113.9", 64), "203.0.113.9");
}

TEST(ClientKeyTest, Ipv6AddressesAreMaskedToThePrefix) {
  EXPECT_EQ(ClientKey("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64), "2001:db8:1:2::/64");
  EXPECT_EQ(ClientKey("2001:db8:1:2::1", 64), "2001:db8:1:2::/64");
  EXPECT_EQ(ClientKey("2001:db8:1:2:ffff::", 48), "2001:db8:1::/48");
  EXPECT_EQ(ClientKey("2001:db8:1:2:ffff::", 56), "2001:db8:1::/56");
  EXPECT_EQ(ClientKey("2001:db8:1:2ff::", 60), "2001:db8:1:2f0::/60");
  EXPECT_EQ(ClientKey("ffff::", 1), "8000::/1");
}

TEST(ClientKeyTest, Ipv6TextIsWrittenCanonically) {
  EXPECT_EQ(ClientKey("2001:DB8:0001:0002:0000:0000:0000:0001", 64), "2001:db8:1:2::/64");
  EXPECT_EQ(ClientKey("2001:0DB8::0001", 128), "2001:db8::1");
}

TEST(ClientKeyTest, Prefix128CountsEachAddress) {
  EXPECT_EQ(ClientKey("2001:db8:1:2::1", 128), "2001:db8:1:2::1");
  EXPECT_NE(ClientKey("2001:db8:1:2::1", 128), ClientKey("2001:db8:1:2::2", 128));
}

TEST(ClientKeyTest, Ipv4MappedAddressesCountAsIpv4) {
  EXPECT_EQ(ClientKey("::ffff:203.0.113.9", 64), "203.0.113.9");
  EXPECT_EQ(ClientKey("::ffff:cb00:7109", 128), "203.0.113.9");
}

TEST(ClientKeyTest, TextThatIsNoAddressIsUnchanged) {
  EXPECT_EQ(ClientKey("unknown", 64), "unknown");
  EXPECT_EQ(ClientKey("", 64), "");
}

// Parameters by value (pointers): see the coroutine notes in docs/STYLE.md.
net::awaitable<void> RunAdmit(const Admission* admission, const http::Request* request,
                              const std::vector<ratelimit::RateLimitItem>* limits,
                              std::optional<Admission::Outcome>* out) {
  std::string route = "/route";
  auto outcome = co_await admission->Admit(*request, *limits, std::move(route), ErrorStyle::kSeed);
  out->emplace(std::move(outcome));
}

class AdmissionTest : public ::testing::Test {
 protected:
  AdmissionTest() : limiter_(clock_, ratelimit::Strategy::kFixedWindow) {}

  std::unique_ptr<Admission> Make(AdmissionSettings settings) {
    return std::make_unique<Admission>(limiter_, metrics_, std::move(settings));
  }

  static http::Request Request(const std::string& peer, const std::string& forwarded = "") {
    http::Request request;
    request.method = "POST";
    request.path = "/openai-completion";
    request.target = request.path;
    request.peer_address = peer;
    if (!forwarded.empty()) request.headers.Add("X-Forwarded-For", forwarded);
    return request;
  }

  // Runs one admission of `request` under `limits`; true when admitted.
  bool Admit(const Admission& admission, const http::Request& request,
             const std::vector<ratelimit::RateLimitItem>& limits) {
    std::optional<Admission::Outcome> outcome;
    net::co_spawn(io_, RunAdmit(&admission, &request, &limits, &outcome), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    io_.restart();
    io_.run();
    EXPECT_TRUE(outcome.has_value());
    return outcome && !outcome->rejection;
  }

  ratelimit::SystemClock clock_;
  ratelimit::MemoryRateLimiter limiter_;
  observe::Metrics metrics_;
  net::io_context io_;
};

TEST_F(AdmissionTest, PeerAddressIsMaskedByDefault) {
  auto admission = Make(AdmissionSettings{});
  EXPECT_EQ(admission->ClientOf(Request("2001:db8:1:2::7")), "2001:db8:1:2::/64");
  EXPECT_EQ(admission->ClientOf(Request("::ffff:127.0.0.1")), "127.0.0.1");
  EXPECT_EQ(admission->ClientOf(Request("127.0.0.1")), "127.0.0.1");
}

TEST_F(AdmissionTest, ForwardedAddressIsMasked) {
  AdmissionSettings settings;
  settings.trusted_proxies = {"127.0.0.1"};
  settings.ipv6_prefix = 56;
  auto admission = Make(settings);
  EXPECT_EQ(admission->ClientOf(Request("127.0.0.1", "2001:db8:1:2ff::9")), "2001:db8:1:200::/56");
  EXPECT_EQ(admission->ClientOf(Request("127.0.0.1", "::ffff:198.51.100.4, 127.0.0.1")),
            "198.51.100.4");
}

TEST_F(AdmissionTest, ConfiguredPrefixApplies) {
  AdmissionSettings settings;
  settings.ipv6_prefix = 128;
  auto admission = Make(settings);
  EXPECT_EQ(admission->ClientOf(Request("2001:db8:1:2::7")), "2001:db8:1:2::7");
}

TEST_F(AdmissionTest, AddressesOfOneNetworkShareOneLimit) {
  auto limits = ratelimit::ParseLimits("2 per minute");
  ASSERT_TRUE(limits);
  auto admission = Make(AdmissionSettings{});
  EXPECT_TRUE(Admit(*admission, Request("2001:db8:1:2::1"), *limits));
  EXPECT_TRUE(Admit(*admission, Request("2001:db8:1:2::2"), *limits));
  EXPECT_FALSE(Admit(*admission, Request("2001:db8:1:2:ffff::3"), *limits))
      << "a third address of the same /64 got a fresh limit";
  EXPECT_TRUE(Admit(*admission, Request("2001:db8:1:3::1"), *limits)) << "another /64";
}

}  // namespace
}  // namespace staple::api
