#include "common/json_text.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace staple {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

template <class BasicJson>
std::string Dump(const BasicJson& value) {
  return value.dump(-1, ' ', false, BasicJson::error_handler_t::replace);
}

// Values of every kind, nested, with escapes, non-ASCII text and invalid UTF-8 (replaced).
std::vector<ordered_json> Samples() {
  return {nullptr,
          true,
          -42,
          18446744073709551615ULL,
          0.1,
          1e300,
          "",
          "plain",
          "quote \" backslash \\ newline \n tab \t control \x01",
          "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80",
          "broken \xff\xfe lead \xc3",
          ordered_json::array(),
          ordered_json::object(),
          ordered_json::parse(R"({"z": 1, "a": [1, "two", {"x": null}], "m": {"k": 0.5}})"),
          std::string(3000, 'x')};
}

TEST(JsonTextTest, AppendsWhatDumpWrites) {
  std::string out = "prefix:";
  std::string expected = "prefix:";
  for (const ordered_json& value : Samples()) {
    AppendJsonText(out, value);
    expected += Dump(value);
    EXPECT_EQ(JsonText(value), Dump(value));
    // The other JSON type has a serializer of its own.
    const json plain = json::parse(Dump(value));
    EXPECT_EQ(JsonText(plain), Dump(plain));
  }
  EXPECT_EQ(out, expected);
}

// Each thread has its own serializer: dumps made at once on several threads do not mix.
TEST(JsonTextTest, ThreadsDumpAtOnce) {
  const auto samples = Samples();
  std::vector<std::string> results(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 200; ++round) {
        for (const auto& value : samples) AppendJsonText(results[t], value);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::string one_round;
  for (const auto& value : samples) one_round += Dump(value);
  std::string expected;
  for (int round = 0; round < 200; ++round) expected += one_round;
  for (const auto& result : results) EXPECT_EQ(result, expected);
}

}  // namespace
}  // namespace staple
