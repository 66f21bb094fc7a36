// The HTTP edge under a flood of idle connections: the real binary with a small connection cap.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

// A TCP connection to 127.0.0.1:port that sends nothing; closed with the object.
class IdleConnection {
 public:
  explicit IdleConnection(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ =
        fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~IdleConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  IdleConnection(const IdleConnection&) = delete;
  IdleConnection& operator=(const IdleConnection&) = delete;

  bool connected() const { return connected_; }

 private:
  int fd_;
  bool connected_ = false;
};

class EdgeTest : public GatewayTest {};

// One peer opening more idle connections than the server can hold must not lock other clients
// out. The server's descriptors are made as scarce as a flood makes them (a limit of 128): without
// a cap it would accept until it runs out of them, and new clients would wait in the listen
// backlog until they give up.
TEST_F(EdgeTest, IdleConnectionsOverTheCapDoNotLockOutANewClient) {
  auto staple =
      StartStaple({{"STAPLE_MAX_CONNECTIONS", "32"}, {"STAPLE_MAX_CONNECTIONS_PER_PEER", "32"}});
  const rlimit limit{128, 128};
  ASSERT_EQ(::prlimit(staple->pid(), RLIMIT_NOFILE, &limit, nullptr), 0);

  std::vector<std::unique_ptr<IdleConnection>> flood;
  for (int i = 0; i < 200; ++i) {
    flood.push_back(std::make_unique<IdleConnection>(staple->port()));
    ASSERT_TRUE(flood.back()->connected()) << "connection " << i;
  }

  client_.set_timeout(std::chrono::seconds(10));
  HttpResponse health = client_.Get(staple->url() + "/healthz");
  EXPECT_EQ(health.status, 200) << health.error;

  HttpResponse metrics = client_.Get(staple->url() + "/metrics");
  ASSERT_EQ(metrics.status, 200) << metrics.error;
  EXPECT_LE(MetricIn(metrics.body, "staple_open_connections"), 32) << metrics.body;
  EXPECT_GT(MetricIn(metrics.body, "staple_connections_evicted_total"), 0) << metrics.body;
}

// The share of one address: a flood from one address closes its own idle connections, and never
// holds more than its share.
TEST_F(EdgeTest, OneAddressFloodingStaysWithinItsShare) {
  auto staple =
      StartStaple({{"STAPLE_MAX_CONNECTIONS", "64"}, {"STAPLE_MAX_CONNECTIONS_PER_PEER", "16"}});
  std::vector<std::unique_ptr<IdleConnection>> flood;
  for (int i = 0; i < 100; ++i) {
    flood.push_back(std::make_unique<IdleConnection>(staple->port()));
    ASSERT_TRUE(flood.back()->connected()) << "connection " << i;
  }
  HttpResponse metrics;
  // The server takes the flood in its own time: wait until every connection was admitted (this
  // client's included) or refused.
  EXPECT_TRUE(WaitUntil(
      [&] {
        metrics = client_.Get(staple->url() + "/metrics");
        return MetricIn(metrics.body, "staple_connections_total") +
                   MetricIn(metrics.body, "staple_connections_refused_total{reason=\"peer\"}") >=
               101;
      },
      std::chrono::seconds(10)))
      << metrics.body;
  EXPECT_LE(MetricIn(metrics.body, "staple_open_connections"), 16) << metrics.body;
}

}  // namespace
}  // namespace staple::testing
