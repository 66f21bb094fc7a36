#include "keys/keys.h"
#include "keys/postgres_key_store.h"
#include "keys/sqlite_key_store.h"

namespace staple::keys {

Result<std::unique_ptr<KeyStore>> OpenKeyStore(const std::string& url,
                                               const std::string& sqlite_path) {
  if (url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0) {
    auto opened = PostgresKeyStore::Open(url);
    if (!opened) return opened.error();
    return std::unique_ptr<KeyStore>(std::move(opened).value());
  }
  auto opened = SqliteKeyStore::Open(sqlite_path);
  if (!opened) return opened.error();
  return std::unique_ptr<KeyStore>(std::move(opened).value());
}

}  // namespace staple::keys
