#pragma once

#include <sqlite3.h>

#include <atomic>
#include <cstring>
#include <stdexcept>

namespace staple::store::testing {

// A SQLite VFS over the default one that makes the file system misbehave the way real ones do,
// for as long as it exists (it is the default VFS meanwhile, so every connection a store opens
// goes through it). Create it before the store and destroy it after.
//
// - deny_write: a database file cannot be opened for writing, as when Staple's user lost write
//   permission on it (or the file system is mounted read-only). SQLite's own Unix VFS then opens
//   it read-only without saying so; this does the same: the open succeeds, read-only.
// - full: files cannot grow (a full disk): a write past a file's current end fails with
//   SQLITE_FULL, as the Unix VFS reports ENOSPC. Writes within a file still succeed.
//
// The flags may be changed from any thread at any time.
class FaultyFileSystem {
 public:
  FaultyFileSystem() {
    real_ = sqlite3_vfs_find(nullptr);
    if (real_ == nullptr || real_->iVersion < 2) throw std::runtime_error("no usable default VFS");
    vfs_.iVersion = 2;
    vfs_.szOsFile = static_cast<int>(sizeof(File)) + real_->szOsFile;
    vfs_.mxPathname = real_->mxPathname;
    vfs_.zName = "staple-faulty";
    vfs_.pAppData = this;
    vfs_.xOpen = &Open;
    vfs_.xDelete = [](sqlite3_vfs* vfs, const char* name, int sync) {
      sqlite3_vfs* real = Self(vfs)->real_;
      return real->xDelete(real, name, sync);
    };
    vfs_.xAccess = [](sqlite3_vfs* vfs, const char* name, int flags, int* out) {
      sqlite3_vfs* real = Self(vfs)->real_;
      return real->xAccess(real, name, flags, out);
    };
    vfs_.xFullPathname = [](sqlite3_vfs* vfs, const char* name, int n, char* out) {
      sqlite3_vfs* real = Self(vfs)->real_;
      return real->xFullPathname(real, name, n, out);
    };
    vfs_.xRandomness = [](sqlite3_vfs* vfs, int n, char* out) {
      sqlite3_vfs* real = Self(vfs)->real_;
      return real->xRandomness(real, n, out);
    };
    vfs_.xSleep = [](sqlite3_vfs* vfs, int us) {
      sqlite3_vfs* real = Self(vfs)->real_;
      return real->xSleep(real, us);
    };
    vfs_.xCurrentTime = [](sqlite3_vfs* vfs, double* out) {
      sqlite3_vfs* real = Self(vfs)->real_;
      return real->xCurrentTime(real, out);
    };
    vfs_.xGetLastError = [](sqlite3_vfs* vfs, int n, char* out) {
      sqlite3_vfs* real = Self(vfs)->real_;
      return real->xGetLastError(real, n, out);
    };
    vfs_.xCurrentTimeInt64 = [](sqlite3_vfs* vfs, sqlite3_int64* out) {
      sqlite3_vfs* real = Self(vfs)->real_;
      return real->xCurrentTimeInt64(real, out);
    };
    if (sqlite3_vfs_register(&vfs_, 1) != SQLITE_OK) {
      throw std::runtime_error("cannot register the faulty VFS");
    }
  }
  ~FaultyFileSystem() {
    sqlite3_vfs_unregister(&vfs_);
    sqlite3_vfs_register(real_, 1);
  }
  FaultyFileSystem(const FaultyFileSystem&) = delete;
  FaultyFileSystem& operator=(const FaultyFileSystem&) = delete;

  std::atomic<bool> deny_write{false};
  std::atomic<bool> full{false};

  // Database files (not WAL or journal files) opened so far, and those opened for writing.
  int opens() const { return opens_.load(); }
  int writable_opens() const { return writable_opens_.load(); }

 private:
  struct File {
    sqlite3_file base;
    FaultyFileSystem* owner;
    sqlite3_file* real;
  };

  static FaultyFileSystem* Self(sqlite3_vfs* vfs) {
    return static_cast<FaultyFileSystem*>(vfs->pAppData);
  }
  static sqlite3_file* Real(sqlite3_file* file) { return reinterpret_cast<File*>(file)->real; }

  static int Open(sqlite3_vfs* vfs, const char* name, sqlite3_file* file, int flags,
                  int* out_flags) {
    FaultyFileSystem* self = Self(vfs);
    auto* faulty = reinterpret_cast<File*>(file);
    faulty->owner = self;
    faulty->real = reinterpret_cast<sqlite3_file*>(faulty + 1);
    faulty->base.pMethods = nullptr;
    const bool main_db = (flags & SQLITE_OPEN_MAIN_DB) != 0;
    int real_flags = flags;
    if (main_db && (flags & SQLITE_OPEN_READWRITE) != 0 && self->deny_write.load()) {
      // What the Unix VFS does when open(O_RDWR) fails with EACCES: open read-only instead.
      real_flags = (flags & ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_READONLY;
    }
    const int rc = self->real_->xOpen(self->real_, name, faulty->real, real_flags, out_flags);
    if (rc != SQLITE_OK) return rc;
    if (main_db) self->opens_.fetch_add(1);
    if (main_db && (real_flags & SQLITE_OPEN_READWRITE) != 0) self->writable_opens_.fetch_add(1);
    faulty->base.pMethods = &kMethods;
    return SQLITE_OK;
  }

  static int Write(sqlite3_file* file, const void* data, int amount, sqlite3_int64 offset) {
    sqlite3_file* real = Real(file);
    if (reinterpret_cast<File*>(file)->owner->full.load()) {
      sqlite3_int64 size = 0;
      if (real->pMethods->xFileSize(real, &size) != SQLITE_OK) return SQLITE_IOERR_FSTAT;
      if (offset + amount > size) return SQLITE_FULL;
    }
    return real->pMethods->xWrite(real, data, amount, offset);
  }

  static const sqlite3_io_methods kMethods;

  sqlite3_vfs* real_ = nullptr;
  sqlite3_vfs vfs_{};
  std::atomic<int> opens_{0};
  std::atomic<int> writable_opens_{0};
};

// Every method but Write passes straight through to the real file.
inline const sqlite3_io_methods FaultyFileSystem::kMethods = {
    3,
    [](sqlite3_file* file) {
      sqlite3_file* real = Real(file);
      const int rc = real->pMethods->xClose(real);
      file->pMethods = nullptr;
      return rc;
    },
    [](sqlite3_file* file, void* out, int amount, sqlite3_int64 offset) {
      return Real(file)->pMethods->xRead(Real(file), out, amount, offset);
    },
    &FaultyFileSystem::Write,
    [](sqlite3_file* file, sqlite3_int64 size) {
      return Real(file)->pMethods->xTruncate(Real(file), size);
    },
    [](sqlite3_file* file, int flags) { return Real(file)->pMethods->xSync(Real(file), flags); },
    [](sqlite3_file* file, sqlite3_int64* size) {
      return Real(file)->pMethods->xFileSize(Real(file), size);
    },
    [](sqlite3_file* file, int lock) { return Real(file)->pMethods->xLock(Real(file), lock); },
    [](sqlite3_file* file, int lock) { return Real(file)->pMethods->xUnlock(Real(file), lock); },
    [](sqlite3_file* file, int* out) {
      return Real(file)->pMethods->xCheckReservedLock(Real(file), out);
    },
    [](sqlite3_file* file, int op, void* arg) {
      return Real(file)->pMethods->xFileControl(Real(file), op, arg);
    },
    [](sqlite3_file* file) { return Real(file)->pMethods->xSectorSize(Real(file)); },
    [](sqlite3_file* file) { return Real(file)->pMethods->xDeviceCharacteristics(Real(file)); },
    [](sqlite3_file* file, int page, int size, int extend, void volatile** out) {
      return Real(file)->pMethods->xShmMap(Real(file), page, size, extend, out);
    },
    [](sqlite3_file* file, int offset, int n, int flags) {
      return Real(file)->pMethods->xShmLock(Real(file), offset, n, flags);
    },
    [](sqlite3_file* file) { Real(file)->pMethods->xShmBarrier(Real(file)); },
    [](sqlite3_file* file, int remove) {
      return Real(file)->pMethods->xShmUnmap(Real(file), remove);
    },
    [](sqlite3_file* file, sqlite3_int64 offset, int amount, void** out) {
      return Real(file)->pMethods->xFetch(Real(file), offset, amount, out);
    },
    [](sqlite3_file* file, sqlite3_int64 offset, void* page) {
      return Real(file)->pMethods->xUnfetch(Real(file), offset, page);
    },
};

}  // namespace staple::store::testing
