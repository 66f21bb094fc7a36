// /readyz and the turn pipeline when the database's disk is full or the database is read-only,
// on a real file system: a size-limited tmpfs mounted for the test (skipped where mounting is not
// possible, e.g. without root).

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "support/gateway_test.h"
#include "support/staple_server.h"
#include "support/temp_dir.h"

namespace staple::testing {
namespace {

using nlohmann::json;

// Mounts a tmpfs of `bytes` on `where`; false (with the reason in `why`) when mounting is not
// possible here.
bool MountSmallFileSystem(const std::filesystem::path& where, std::size_t bytes, std::string* why) {
  const std::string options = "size=" + std::to_string(bytes) + ",mode=0755";
  if (mount("tmpfs", where.c_str(), "tmpfs", 0, options.c_str()) != 0) {
    *why = std::string("cannot mount a tmpfs (") + std::strerror(errno) +
           "): this test needs root (CAP_SYS_ADMIN)";
    return false;
  }
  return true;
}

class ReadinessTest : public GatewayTest {
 protected:
  void SetUp() override {
    mount_point_ = dir_.path() / "fs";
    std::filesystem::create_directories(mount_point_);
    std::string why;
    if (!MountSmallFileSystem(mount_point_, 16 * 1024 * 1024, &why)) GTEST_SKIP() << why;
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) umount2(mount_point_.c_str(), MNT_DETACH);
  }

  // Fills the file system until a write fails with ENOSPC.
  void FillDisk() {
    const std::filesystem::path filler = mount_point_ / "filler";
    const int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    const std::vector<char> block(64 * 1024, 'x');
    std::size_t size = block.size();
    for (;;) {
      const ssize_t written = ::write(fd, block.data(), size);
      if (written >= 0) continue;
      if (errno != ENOSPC) {
        ADD_FAILURE() << "filling the disk: " << std::strerror(errno);
        break;
      }
      if (size == 1) break;  // not even one byte fits
      size = std::max<std::size_t>(1, size / 2);
    }
    ::close(fd);
  }
  void FreeDisk() { std::filesystem::remove(mount_point_ / "filler"); }

  std::size_t UpstreamChatRequests() const {
    return fake_.requests_to("POST", "/v1/chat/completions").size();
  }

  HttpResponse Ready(const StapleServer& staple) { return client_.Get(staple.url() + "/readyz"); }

  TempDir dir_;
  std::filesystem::path mount_point_;
  bool mounted_ = false;
};

TEST_F(ReadinessTest, AFullDiskMakesStapleUnreadyAndRefusesTurnsUntilSpaceReturns) {
  auto staple = StartStaple({}, mount_point_);
  HttpResponse ready = Ready(*staple);
  ASSERT_EQ(ready.status, 200) << ready.body;
  EXPECT_EQ(ready.Json()["store"], "ok") << ready.body;
  const json first = Turn(*staple, "before the disk filled up");
  ASSERT_TRUE(first.contains("user_id"));
  const std::string user = first["user_id"];

  FillDisk();
  // Idle: nobody writes, yet readiness must find out (through its write probe).
  HttpResponse unready;
  EXPECT_TRUE(WaitUntil(
      [&] {
        unready = Ready(*staple);
        return unready.status == 503;
      },
      std::chrono::seconds(30)))
      << "still ready with a full disk: " << unready.body;
  const json body = unready.Json();
  EXPECT_EQ(body["status"], "unavailable") << unready.body;
  ASSERT_TRUE(body["store"].is_string()) << unready.body;
  EXPECT_EQ(body["store"].get<std::string>().rfind("write failing: ", 0), 0u) << unready.body;
  EXPECT_EQ(body["limiter"], "ok") << unready.body;

  // Turns are refused before the upstream is asked, in each API's shape.
  const std::size_t asked = UpstreamChatRequests();
  HttpResponse refused = Complete(*staple, "while the disk is full", user);
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_EQ(refused.Json()["type"], "storage_error") << refused.body;
  const std::string v1_body =
      R"({"model": "m", "messages": [{"role": "user", "content": "while full"}]})";
  HttpResponse refused_v1 = client_.PostJson(staple->url() + "/v1/chat/completions", v1_body);
  EXPECT_EQ(refused_v1.status, 503) << refused_v1.body;
  EXPECT_TRUE(refused_v1.Json()["error"].is_object()) << refused_v1.body;
  EXPECT_EQ(UpstreamChatRequests(), asked) << "the upstream was asked for answers nobody gets";

  FreeDisk();
  HttpResponse again;
  EXPECT_TRUE(WaitUntil(
      [&] {
        again = Ready(*staple);
        return again.status == 200;
      },
      std::chrono::seconds(30)))
      << "did not recover once space returned: " << again.body;
  Turn(*staple, "after space returned", user);
  EXPECT_EQ(UpstreamChatRequests(), asked + 1);
  const json rows =
      QuerySqlite(staple->database_path(), "SELECT content FROM messages WHERE user_id = '" + user +
                                               "' AND role = 'user' ORDER BY id");
  ASSERT_EQ(rows.size(), 2u) << rows.dump();
  EXPECT_EQ(rows[0]["content"], "before the disk filled up");
  EXPECT_EQ(rows[1]["content"], "after space returned");
}

TEST_F(ReadinessTest, ADatabaseOnAReadOnlyFileSystemIsAStartupError) {
  {
    auto staple = StartStaple({}, mount_point_);
    Turn(*staple, "written while writable");
    staple->Stop();
  }
  ASSERT_EQ(mount("tmpfs", mount_point_.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, nullptr), 0)
      << std::strerror(errno);
  RunResult run =
      RunStaple({"serve", "--host", "127.0.0.1", "--port", "0"}, UpstreamEnv(fake_), mount_point_);
  ASSERT_TRUE(run.status.has_value()) << "still running: it started on a database it cannot write";
  EXPECT_TRUE(run.status->Exited()) << run.status->ToString();
  EXPECT_NE(run.status->code, 0) << run.err;
  // The default database, relative to the working directory.
  EXPECT_NE(run.err.find("'instance/chat_history.db'"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("read-only"), std::string::npos) << run.err;
}

}  // namespace
}  // namespace staple::testing
