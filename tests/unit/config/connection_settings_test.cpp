// STAPLE_MAX_CONNECTIONS, STAPLE_MAX_CONNECTIONS_PER_PEER, STAPLE_IDLE_TIMEOUT and
// STAPLE_HEADER_TIMEOUT: defaults, resolution and validation.

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "http/connection_limits.h"
#include "http/server.h"

namespace staple::config {
namespace {

Result<Config> LoadEnv(std::map<std::string, std::string> env) {
  Sources sources;
  sources.environment = [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  return Load(sources);
}

std::string Effective(const Config& config, const std::string& name) {
  for (const auto& [key, value] : config.effective) {
    if (key == name) return value;
  }
  return {};
}

TEST(ConnectionSettingsTest, CapDerivesFromTheOpenFileLimitAndTheShareFromTheCap) {
  auto config = LoadEnv({});
  ASSERT_TRUE(config.ok()) << config.error().message;
  const auto cap = http::DefaultMaxConnections(http::OpenFileLimit());
  EXPECT_EQ(config->server.max_connections, cap);
  EXPECT_LT(config->server.max_connections, http::OpenFileLimit());
  // Listening on loopback (the default), every peer is this machine: no share.
  EXPECT_EQ(config->server.max_connections_per_peer, cap);
  // The banner shows the resolved numbers, not "0".
  EXPECT_EQ(Effective(*config, "STAPLE_MAX_CONNECTIONS"), std::to_string(cap));
  const http::ServerOptions server;
  EXPECT_EQ(config->server.idle_timeout, server.idle_timeout);
  EXPECT_EQ(config->server.header_timeout, server.header_timeout);
}

TEST(ConnectionSettingsTest, ShareIsAQuarterOfTheCapWhenListeningBeyondLoopback) {
  auto config = LoadEnv({{"STAPLE_HOST", "0.0.0.0"}, {"STAPLE_AUTH", "keys"}});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->server.max_connections_per_peer,
            http::DefaultMaxConnectionsPerPeer(config->server.max_connections));
  EXPECT_LT(config->server.max_connections_per_peer, config->server.max_connections);
  auto small = LoadEnv(
      {{"STAPLE_HOST", "0.0.0.0"}, {"STAPLE_AUTH", "keys"}, {"STAPLE_MAX_CONNECTIONS", "10"}});
  ASSERT_TRUE(small.ok()) << small.error().message;
  EXPECT_EQ(small->server.max_connections_per_peer, 10u);
}

TEST(ConnectionSettingsTest, ExplicitValuesAreKept) {
  auto config = LoadEnv({{"STAPLE_MAX_CONNECTIONS", "32"},
                         {"STAPLE_MAX_CONNECTIONS_PER_PEER", "8"},
                         {"STAPLE_IDLE_TIMEOUT", "5"},
                         {"STAPLE_HEADER_TIMEOUT", "1.5"}});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->server.max_connections, 32u);
  EXPECT_EQ(config->server.max_connections_per_peer, 8u);
  EXPECT_EQ(config->server.idle_timeout, std::chrono::seconds(5));
  EXPECT_EQ(config->server.header_timeout, std::chrono::milliseconds(1500));
}

TEST(ConnectionSettingsTest, InvalidValuesFailWithTheVariablesName) {
  const std::string over_limit = std::to_string(http::OpenFileLimit());
  for (const auto& [name, value] :
       std::vector<std::pair<std::string, std::string>>{{"STAPLE_MAX_CONNECTIONS", over_limit},
                                                        {"STAPLE_MAX_CONNECTIONS", "many"},
                                                        {"STAPLE_MAX_CONNECTIONS_PER_PEER", "-1"},
                                                        {"STAPLE_IDLE_TIMEOUT", "0"},
                                                        {"STAPLE_HEADER_TIMEOUT", "soon"}}) {
    SCOPED_TRACE(name + "=" + value);
    auto config = LoadEnv({{name, value}});
    ASSERT_FALSE(config.ok());
    EXPECT_NE(config.error().message.find(name), std::string::npos) << config.error().message;
  }
  auto over = LoadEnv({{"STAPLE_MAX_CONNECTIONS", over_limit}});
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.error().message.find("open-file limit"), std::string::npos)
      << over.error().message;
  auto share =
      LoadEnv({{"STAPLE_MAX_CONNECTIONS", "32"}, {"STAPLE_MAX_CONNECTIONS_PER_PEER", "33"}});
  ASSERT_FALSE(share.ok());
  EXPECT_NE(share.error().message.find("STAPLE_MAX_CONNECTIONS_PER_PEER"), std::string::npos);
}

}  // namespace
}  // namespace staple::config
