#include "common/secure_random.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>
#include <set>
#include <string>
#include <vector>

namespace staple {
namespace {

TEST(SecureRandomTest, TwoDrawsDifferAndFillTheWholeBuffer) {
  std::array<unsigned char, 32> first{};
  std::array<unsigned char, 32> second{};
  SecureRandomBytes(first.data(), first.size());
  SecureRandomBytes(second.data(), second.size());
  EXPECT_NE(first, second);
  // The last 16 bytes left at zero would mean the buffer was not filled (chance 2^-128).
  const std::array<unsigned char, 16> zeros{};
  EXPECT_FALSE(std::equal(zeros.begin(), zeros.end(), first.begin() + 16));
}

// Small draws come from a pool of bytes drawn ahead: across many refills, no two repeat.
TEST(SecureRandomTest, SmallDrawsAcrossManyRefillsAreDistinct) {
  std::set<std::vector<unsigned char>> seen;
  for (int i = 0; i < 2000; ++i) {  // 18 bytes each: about 70 refills of 512 bytes
    std::vector<unsigned char> id(18);
    SecureRandomBytes(id.data(), id.size());
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 2000u);
  std::vector<unsigned char> large(4096);  // past the pool: straight from OpenSSL
  SecureRandomBytes(large.data(), large.size());
  EXPECT_NE(std::vector<unsigned char>(large.begin(), large.begin() + 2048),
            std::vector<unsigned char>(large.begin() + 2048, large.end()));
}

// The child of a fork must not hand out the bytes its parent drew ahead before the fork: the
// parent's next draw and the child's first must differ.
TEST(SecureRandomTest, AForkedChildDoesNotRepeatItsParentsBytes) {
  std::array<unsigned char, 16> first{};
  SecureRandomBytes(first.data(), first.size());  // the pool now holds bytes drawn ahead
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::array<unsigned char, 16> drawn{};
    SecureRandomBytes(drawn.data(), drawn.size());
    const bool written =
        write(pipe_fds[1], drawn.data(), drawn.size()) == static_cast<ssize_t>(drawn.size());
    _exit(written ? 0 : 1);
  }
  close(pipe_fds[1]);
  std::array<unsigned char, 16> in_child{};
  std::size_t got = 0;
  while (got < in_child.size()) {
    const ssize_t n = read(pipe_fds[0], in_child.data() + got, in_child.size() - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  close(pipe_fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ(got, in_child.size());
  std::array<unsigned char, 16> in_parent{};
  SecureRandomBytes(in_parent.data(), in_parent.size());
  EXPECT_NE(in_child, in_parent);
}

TEST(SecureRandomTest, TheEngineMakesDistinctVersion4Uuids) {
  SecureRandomEngine engine;
  boost::uuids::basic_random_generator<SecureRandomEngine> generate(engine);
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {  // many more bytes than one refill of the 512 drawn ahead
    const auto id = generate();
    EXPECT_EQ(id.version(), boost::uuids::uuid::version_random_number_based);
    EXPECT_EQ(id.variant(), boost::uuids::uuid::variant_rfc_4122);
    seen.insert(boost::uuids::to_string(id));
  }
  EXPECT_EQ(seen.size(), 1000u);
}

}  // namespace
}  // namespace staple
