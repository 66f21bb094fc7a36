#include "store/sqlite/sqlite_maintenance.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <system_error>
#include <thread>
#include <utility>

#include "store/sqlite/sqlite_db.h"
#include "store/store_errors.h"

namespace staple::store {

using sqlite::Database;

namespace {

int BusyMilliseconds(std::chrono::milliseconds timeout) {
  return static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(
      timeout.count(), 0, std::numeric_limits<int>::max()));
}

std::string ErrnoText(int error) { return std::generic_category().message(error); }

// fsync of a file or directory; kStorage naming `what`.
Status SyncPath(const std::string& path, const std::string& what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return StorageFailure("cannot open " + what + " '" + path + "': " + ErrnoText(errno));
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0)
    return StorageFailure("cannot sync " + what + " '" + path + "': " + ErrnoText(error));
  return Ok();
}

// Removes the temporary copy (and any journal SQLite left beside it) unless released.
class TemporaryFile {
 public:
  explicit TemporaryFile(std::string path) : path_(std::move(path)) {}
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  ~TemporaryFile() {
    if (path_.empty()) return;
    for (const char* suffix : {"", "-journal", "-wal", "-shm"}) ::unlink((path_ + suffix).c_str());
  }
  const std::string& path() const { return path_; }
  void Release() { path_.clear(); }

 private:
  std::string path_;
};

// Copies every page of `source` (inside its open read transaction) into `destination`, in steps.
Result<BackupSummary> CopyPages(Database& source, Database& destination,
                                const BackupOptions& options) {
  sqlite3_backup* backup =
      sqlite3_backup_init(destination.handle(), "main", source.handle(), "main");
  if (backup == nullptr)
    return StorageFailure("cannot start the backup: " + destination.LastError());
  const auto give_up_at = std::chrono::steady_clock::now() + options.busy_timeout;
  int rc = SQLITE_OK;
  for (;;) {
    rc = sqlite3_backup_step(backup, options.pages_per_step);
    if (rc == SQLITE_DONE) break;
    if (rc == SQLITE_OK) continue;
    // A lock held elsewhere: wait a little, within the busy timeout.
    const bool busy = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
    if (!busy || std::chrono::steady_clock::now() >= give_up_at) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  BackupSummary summary;
  summary.pages = sqlite3_backup_pagecount(backup);
  const int finished = sqlite3_backup_finish(backup);
  if (rc != SQLITE_DONE) {
    return StorageFailure(std::string("backup step failed: ") + sqlite3_errstr(rc));
  }
  if (finished != SQLITE_OK) {
    return StorageFailure("cannot finish the backup: " + destination.LastError());
  }
  return summary;
}

}  // namespace

Result<std::optional<AutoVacuum>> ReadAutoVacuum(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::optional<AutoVacuum>();
  auto db = Database::Open(path, SQLITE_OPEN_READWRITE);
  if (!db) return db.error();
  auto mode = db->QueryInt("PRAGMA auto_vacuum");
  if (!mode) return Context("cannot read the auto-vacuum mode of '" + path + "'", mode.error());
  return std::optional<AutoVacuum>(static_cast<AutoVacuum>(*mode));
}

Status EnableIncrementalVacuum(const std::string& path, std::chrono::milliseconds busy_timeout) {
  auto db = Database::Open(path, SQLITE_OPEN_READWRITE);
  if (!db) return db.error();
  db->SetBusyTimeout(BusyMilliseconds(busy_timeout));
  // From full, the pragma alone switches; from none it only takes effect with the VACUUM.
  if (auto set = db->Exec("PRAGMA auto_vacuum = INCREMENTAL"); !set) {
    return Context("cannot set incremental auto-vacuum on '" + path + "'", set.error());
  }
  auto mode = db->QueryInt("PRAGMA auto_vacuum");
  if (!mode) return Context("cannot read the auto-vacuum mode of '" + path + "'", mode.error());
  if (*mode == static_cast<int>(AutoVacuum::kIncremental)) return Ok();
  if (auto vacuumed = db->Exec("VACUUM"); !vacuumed) {
    return Context("VACUUM of '" + path + "' failed", vacuumed.error());
  }
  mode = db->QueryInt("PRAGMA auto_vacuum");
  if (!mode) return Context("cannot read the auto-vacuum mode of '" + path + "'", mode.error());
  if (*mode != static_cast<int>(AutoVacuum::kIncremental)) {
    return StorageFailure("'" + path +
                          "' is still not in incremental auto-vacuum mode after VACUUM");
  }
  return Ok();
}

Result<BackupSummary> BackupDatabase(const BackupOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (options.pages_per_step <= 0) {
    return MakeError(ErrorKind::kInvalidArgument, "pages_per_step must be positive");
  }
  if (!fs::is_regular_file(options.source, ec)) {
    return MakeError(ErrorKind::kInvalidArgument, "no SQLite database at '" + options.source + "'");
  }
  const fs::path destination(options.destination);
  if (fs::is_directory(destination, ec)) {
    return MakeError(ErrorKind::kInvalidArgument,
                     "'" + options.destination + "' is a directory; give the backup file's path");
  }
  if (!options.overwrite && fs::exists(destination, ec)) {
    return MakeError(ErrorKind::kInvalidArgument,
                     "'" + options.destination + "' already exists (--force replaces it)");
  }
  const fs::path directory =
      destination.parent_path().empty() ? fs::path(".") : destination.parent_path();
  if (!fs::is_directory(directory, ec)) {
    return MakeError(ErrorKind::kInvalidArgument,
                     "directory '" + directory.string() + "' does not exist");
  }

  // The temporary copy lives in the destination's directory, so that the rename is atomic.
  std::string name = ".";
  name.append(destination.filename().string()).append(".tmp-XXXXXX");
  std::string pattern = (directory / name).string();
  const int fd = ::mkstemp(pattern.data());
  if (fd < 0) {
    return StorageFailure("cannot create a temporary file in '" + directory.string() +
                          "': " + ErrnoText(errno));
  }
  ::close(fd);
  TemporaryFile temporary(pattern);

  auto source = Database::Open(options.source, SQLITE_OPEN_READWRITE);
  if (!source) return source.error();
  source->SetBusyTimeout(BusyMilliseconds(options.busy_timeout));
  // One read transaction for the whole copy: its snapshot is what gets copied, and the backup
  // is never restarted by writes committed meanwhile.
  if (auto begun = source->Exec("BEGIN"); !begun)
    return Context("cannot read the source", begun.error());
  if (auto read = source->QueryInt("SELECT count(*) FROM sqlite_master"); !read) {
    return Context("cannot read '" + options.source + "'", read.error());
  }
  Result<BackupSummary> copied = MakeError(ErrorKind::kInternal, "not copied");
  {
    auto target = Database::Open(temporary.path(), SQLITE_OPEN_READWRITE);
    if (!target) return target.error();
    copied = CopyPages(*source, *target, options);
    // The copy's connection closes here, before the file is synced and published.
  }
  (void)source->Exec("COMMIT");
  if (!copied) return copied;
  copied->bytes = static_cast<std::int64_t>(fs::file_size(temporary.path(), ec));

  if (auto synced = SyncPath(temporary.path(), "backup file"); !synced) return synced.error();
  if (options.overwrite) {
    if (::rename(temporary.path().c_str(), options.destination.c_str()) != 0) {
      return StorageFailure("cannot rename the backup to '" + options.destination +
                            "': " + ErrnoText(errno));
    }
  } else {
    // link() fails when the destination exists: it is never replaced, even if it appeared
    // during the copy.
    if (::link(temporary.path().c_str(), options.destination.c_str()) != 0) {
      const int error = errno;
      if (error == EEXIST) {
        return MakeError(ErrorKind::kInvalidArgument,
                         "'" + options.destination + "' already exists (--force replaces it)");
      }
      return StorageFailure("cannot create '" + options.destination + "': " + ErrnoText(error));
    }
    ::unlink(temporary.path().c_str());
  }
  temporary.Release();
  if (auto synced = SyncPath(directory.string(), "directory"); !synced) return synced.error();
  return copied;
}

}  // namespace staple::store
