#include "keys/sqlite_key_store.h"

#include <gtest/gtest.h>

#include "key_store_contract.h"
#include "support/temp_dir.h"

namespace staple::keys {
namespace {

using testing::Describe;
using testing::NewRecord;

std::unique_ptr<KeyStore> Open(const std::string& path) {
  auto store = OpenKeyStore("sqlite:///" + path, path);
  EXPECT_TRUE(store.ok()) << Describe(store);
  return store.ok() ? std::move(store).value() : nullptr;
}

TEST(SqliteKeyStore, FollowsTheKeyStoreContract) {
  ::staple::testing::TempDir dir;
  const std::string path = (dir / "instance" / "chat_history.db").string();
  auto store = Open(path);
  auto other = Open(path);
  ASSERT_NE(store, nullptr);
  ASSERT_NE(other, nullptr);
  testing::ExpectKeyStoreContract(*store, *other);
}

TEST(SqliteKeyStore, KeepsKeysAcrossReopening) {
  ::staple::testing::TempDir dir;
  const std::string path = (dir / "keys.db").string();
  KeyRecord record = NewRecord("durable");
  {
    auto store = Open(path);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Create(record).ok());
  }
  auto store = Open(path);
  ASSERT_NE(store, nullptr);
  auto got = store->Get(record.id);
  ASSERT_TRUE(got.ok()) << Describe(got);
  EXPECT_EQ(got->secret_hash, record.secret_hash);
  auto version = store->Version();
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(*version, 1);
}

TEST(SqliteKeyStore, FailsToOpenAnUnusablePathWithAStorageError) {
  ::staple::testing::TempDir dir;
  ::staple::testing::WriteFile(dir / "file", "not a folder");
  const std::string path = (dir / "file" / "keys.db").string();
  auto store = OpenKeyStore("sqlite:///" + path, path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
}

}  // namespace
}  // namespace staple::keys
