// Needs PostgreSQL's server binaries (a throwaway server is started in a temp dir).

#include "keys/postgres_key_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>

#include "key_store_contract.h"
#include "support/postgres_server.h"

namespace staple::keys {
namespace {

using testing::Describe;
using ::testing::HasSubstr;
using ::testing::Not;

::staple::testing::PostgresServer& SharedPostgres() {
  static ::staple::testing::PostgresServer server;
  return server;
}

std::string FreshDatabase() {
  static std::atomic<int> counter{0};
  const std::string name =
      "staple_keys_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
  SharedPostgres().CreateDatabase(name);
  return SharedPostgres().Url(name);
}

std::unique_ptr<KeyStore> Open(const std::string& url) {
  auto store = OpenKeyStore(url, "unused.db");
  EXPECT_TRUE(store.ok()) << Describe(store);
  return store.ok() ? std::move(store).value() : nullptr;
}

TEST(PostgresKeyStore, FollowsTheKeyStoreContract) {
  const std::string url = FreshDatabase();
  auto store = Open(url);
  auto other = Open(url);
  ASSERT_NE(store, nullptr);
  ASSERT_NE(other, nullptr);
  testing::ExpectKeyStoreContract(*store, *other);
}

TEST(PostgresKeyStore, ReconnectsAfterTheServerRestarts) {
  const std::string url = FreshDatabase();
  auto store = Open(url);
  ASSERT_NE(store, nullptr);
  SharedPostgres().Stop();
  auto down = store->Version();
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(down.error().message, Not(HasSubstr(::staple::testing::PostgresServer::password())));
  SharedPostgres().Start();
  auto up = store->Version();
  EXPECT_TRUE(up.ok()) << Describe(up);
}

TEST(PostgresKeyStore, ErrorsNeverShowThePassword) {
  const std::string url = FreshDatabase();
  auto store = OpenKeyStore(url.substr(0, url.rfind('/')) + "/no_such_database", "unused.db");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(store.error().message, Not(HasSubstr(::staple::testing::PostgresServer::password())));
}

}  // namespace
}  // namespace staple::keys
