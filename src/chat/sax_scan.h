#pragma once

#include <array>
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace staple::chat {

// What the one-pass readers of JSON texts in chat/ (ScanCompletion, ParseChatBody) share: the
// types and callbacks nlohmann's sax_parse asks for that they handle alike, and the stack of the
// containers being read. A container that holds nothing of interest is not pushed, only counted
// (skipping()), so the stack never grows past the deepest place a reader looks at (kDepth).
//
// `Derived` provides `static Member KeyIn(Where, std::string_view key)`: the member a key names
// in a container of kind `Where` (Member{} for none).
template <typename Derived, typename Where, typename Member, std::size_t kDepth>
class SaxScan {
 public:
  using number_integer_t = nlohmann::json::number_integer_t;
  using number_unsigned_t = nlohmann::json::number_unsigned_t;
  using number_float_t = nlohmann::json::number_float_t;
  using string_t = nlohmann::json::string_t;
  using binary_t = nlohmann::json::binary_t;

  bool key(string_t& value) {
    if (skipped_ == 0)
      levels_[depth_ - 1].member = Derived::KeyIn(levels_[depth_ - 1].where, value);
    return true;
  }
  bool end_array() { return Close(); }
  bool parse_error(std::size_t /*position*/, const std::string& /*token*/,
                   const nlohmann::detail::exception& /*error*/) {
    return false;
  }

 protected:
  struct Level {
    Where where{};
    bool is_array = false;
    Member member{};             // of the value after the last key (objects)
    std::size_t next_index = 0;  // of the next element (arrays)
  };

  bool skipping() const { return skipped_ > 0; }
  // The innermost container being read, or nullptr for the top-level value itself.
  const Level* top() const { return depth_ == 0 ? nullptr : &levels_[depth_ - 1]; }

  bool Push(Where where, bool is_array) {
    levels_[depth_] = Level{where, is_array, Member{}, 0};
    ++depth_;
    return true;
  }
  bool Skip() {
    ++skipped_;
    return true;
  }
  // Ends the innermost container, read or skipped.
  bool Close() {
    if (skipped_ > 0) {
      --skipped_;
    } else {
      --depth_;
    }
    if (skipped_ == 0) EndValue();
    return true;
  }
  // A value ended at the current level: the next element of an array has the next index.
  void EndValue() {
    if (depth_ > 0 && levels_[depth_ - 1].is_array) ++levels_[depth_ - 1].next_index;
  }

 private:
  std::array<Level, kDepth> levels_{};
  std::size_t depth_ = 0;
  std::size_t skipped_ = 0;
};

}  // namespace staple::chat
