#include "common/secure_random.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>
#include <set>
#include <string>

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

TEST(SecureRandomTest, TheEngineMakesDistinctVersion4Uuids) {
  SecureRandomEngine engine;
  boost::uuids::basic_random_generator<SecureRandomEngine> generate(engine);
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {  // many more than one 64-byte draw of the engine
    const auto id = generate();
    EXPECT_EQ(id.version(), boost::uuids::uuid::version_random_number_based);
    EXPECT_EQ(id.variant(), boost::uuids::uuid::variant_rfc_4122);
    seen.insert(boost::uuids::to_string(id));
  }
  EXPECT_EQ(seen.size(), 1000u);
}

}  // namespace
}  // namespace staple
