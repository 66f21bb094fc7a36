#pragma once

#include <filesystem>
#include <string>

namespace staple::testing {

// A fresh directory under $TMPDIR (or /tmp), removed recursively on destruction unless the
// environment variable STAPLE_KEEP_TEST_DIRS is "1" (then its path is printed to stderr).
// Throws std::runtime_error when the directory cannot be created.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "staple-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // path() / relative.
  std::filesystem::path operator/(const std::filesystem::path& relative) const {
    return path_ / relative;
  }

 private:
  std::filesystem::path path_;
};

// Writes `content` to `path` (creating parent directories). Throws on failure.
void WriteFile(const std::filesystem::path& path, const std::string& content);

// The whole content of `path`, or "" when it cannot be read.
std::string ReadFile(const std::filesystem::path& path);

}  // namespace staple::testing
