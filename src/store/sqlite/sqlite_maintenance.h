#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "common/result.h"

namespace staple::store {

// Maintenance of a SQLite conversation database outside the store's own connections: the
// auto-vacuum mode that retention needs, and online backups. Each call opens its own connections
// and blocks: run it from a command or at start-up, never on an I/O thread.

// PRAGMA auto_vacuum values.
enum class AutoVacuum { kNone = 0, kFull = 1, kIncremental = 2 };

// The auto-vacuum mode of the database file at `path`; std::nullopt when there is no file yet (the
// store then creates it in incremental mode). kStorage when it cannot be read.
Result<std::optional<AutoVacuum>> ReadAutoVacuum(const std::string& path);

// Switches the database at `path` to incremental auto-vacuum. From none that takes a VACUUM,
// which rewrites the whole file: it needs about as much free disk space as the file's size and
// holds the write lock until it ends (up to `busy_timeout` waiting for it first), so call it before
// the store opens. kStorage when SQLite fails.
Status EnableIncrementalVacuum(const std::string& path, std::chrono::milliseconds busy_timeout);

struct BackupOptions {
  std::string source;       // the live database file
  std::string destination;  // the copy to write; its directory must exist
  bool overwrite = false;   // replace an existing destination
  // Pages copied per step of SQLite's backup API.
  int pages_per_step = 1024;
  // How long one step waits for a lock before the backup fails.
  std::chrono::milliseconds busy_timeout{5000};
};

struct BackupSummary {
  std::int64_t pages = 0;
  std::int64_t bytes = 0;
};

// Copies the database at `source` to `destination` with SQLite's online backup API while other
// processes keep writing to it. The copy is one consistent snapshot: a read transaction on the
// source stays open for the whole copy, so every transaction committed before the backup started
// is in it and none committed later is. In WAL mode (how the store runs) that read transaction
// blocks no writer; the WAL only cannot be checkpointed past it until the copy ends. The pages go
// in steps of `pages_per_step` into a temporary file next to `destination`, which is synced and
// then renamed into place, so `destination` is never a partial copy. Without `overwrite`, an
// existing destination is never replaced, even one that appears during the copy.
//
// Errors: kInvalidArgument when `source` does not exist, `destination` exists (without
// `overwrite`) or is a directory; kStorage when SQLite or the file system fails (the temporary
// file is then removed).
Result<BackupSummary> BackupDatabase(const BackupOptions& options);

}  // namespace staple::store
