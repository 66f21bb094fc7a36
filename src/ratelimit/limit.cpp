#include "ratelimit/limit.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <optional>

namespace staple::ratelimit {

namespace {

constexpr Amount kMaxAmount = ~Amount{0};

// The grammar, as the `limits` library's regular expression defines it (Python `re`, Unicode
// strings, IGNORECASE):
//
//   text   := single ( ':'? sep single )*          sep := ';' | ',' | '|'
//   single := ws* digits ws* ( '/' | 'per' ) ws* digits? ws* unit 's'? ws*
//   unit   := second | minute | hour | day | month | year
//
// `ws` is Python's Unicode whitespace (so U+00A0 counts), `digits` are ASCII only (full-width
// digits do not match `[0-9]`), and letters match case-insensitively. A hand-written scanner gives
// the same language in one pass and lets errors say where the text went wrong.

// Decodes one UTF-8 code point at `pos`; returns its length, or 0 when the bytes are not valid
// UTF-8 (such bytes never match anything in the grammar).
std::size_t DecodeUtf8(std::string_view s, std::size_t pos, char32_t& out) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) {
    out = b0;
    return 1;
  }
  std::size_t len = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    cp = b0 & 0x1Fu;
    min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    cp = b0 & 0x0Fu;
    min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    cp = b0 & 0x07u;
    min = 0x10000;
  } else {
    return 0;
  }
  if (pos + len > s.size()) return 0;
  for (std::size_t i = 1; i < len; ++i) {
    const unsigned char b = byte(pos + i);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  out = cp;
  return len;
}

// Python's str.isspace(), which is what `\s` matches in a Unicode pattern.
bool IsUnicodeSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

char LowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool IsSeparator(char c) { return c == ';' || c == ',' || c == '|'; }

struct UnitName {
  std::string_view name;
  Granularity granularity;
};

// None of the names is a prefix of another, so the first match is the only one.
constexpr UnitName kUnits[] = {
    {"second", Granularity::kSecond}, {"minute", Granularity::kMinute},
    {"hour", Granularity::kHour},     {"day", Granularity::kDay},
    {"month", Granularity::kMonth},   {"year", Granularity::kYear},
};

// Renders the input for an error message: printable ASCII and valid UTF-8 as they are, control
// characters and invalid bytes as escapes, so the message stays one readable line.
std::string Quote(std::string_view s) {
  constexpr std::size_t kMaxShown = 120;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  std::size_t pos = 0;
  while (pos < s.size() && pos < kMaxShown) {
    const unsigned char c = static_cast<unsigned char>(s[pos]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++pos;
    } else if (c == '\n') {
      out += "\\n";
      ++pos;
    } else if (c == '\t') {
      out += "\\t";
      ++pos;
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
      ++pos;
    } else {
      char32_t cp = 0;
      const std::size_t len = c >= 0x80 ? DecodeUtf8(s, pos, cp) : 0;
      if (len > 0 && !(cp >= 0x80 && cp < 0xA0)) {
        out.append(s.substr(pos, len));
        pos += len;
      } else {
        out += "\\x";
        out += kHex[c >> 4];
        out += kHex[c & 0xF];
        ++pos;
      }
    }
  }
  if (pos < s.size()) out += "...";
  out += '"';
  return out;
}

class Scanner {
 public:
  explicit Scanner(std::string_view text) : text_(text) {}

  Result<std::vector<RateLimitItem>> ParseAll() {
    std::vector<RateLimitItem> items;
    for (;;) {
      std::optional<Error> error;
      items.push_back(ParseOne(items.empty(), error));
      if (error) return std::move(*error);
      if (AtEnd()) return items;
      // The `limits` expression writes `(:?sep single)*`, which reads as an optional ':' before
      // each separator; accepting it keeps strings that work with Flask-Limiter working here.
      const std::size_t before_colon = pos_;
      if (text_[pos_] == ':') ++pos_;
      if (AtEnd() || !IsSeparator(text_[pos_])) {
        if (pos_ != before_colon) return Fail("expected ';', ',' or '|' after ':'");
        return Fail("expected ';', ',' or '|' between limits, or the end of the text");
      }
      ++pos_;
    }
  }

 private:
  bool AtEnd() const { return pos_ >= text_.size(); }

  void SkipSpace() {
    while (!AtEnd()) {
      char32_t cp = 0;
      const std::size_t len = DecodeUtf8(text_, pos_, cp);
      if (len == 0 || !IsUnicodeSpace(cp)) return;
      pos_ += len;
    }
  }

  // Consumes `word` when the text continues with it, ignoring ASCII case.
  bool TakeWord(std::string_view word) {
    if (text_.size() - pos_ < word.size()) return false;
    for (std::size_t i = 0; i < word.size(); ++i) {
      if (LowerAscii(text_[pos_ + i]) != word[i]) return false;
    }
    pos_ += word.size();
    return true;
  }

  // Reads ASCII digits; saturates at `max` (the `limits` library has unbounded integers).
  template <typename T>
  bool TakeNumber(T max, T& out) {
    if (AtEnd() || !IsDigit(text_[pos_])) return false;
    T value = 0;
    while (!AtEnd() && IsDigit(text_[pos_])) {
      const T digit = static_cast<T>(text_[pos_] - '0');
      value = (value > (max - digit) / 10) ? max : static_cast<T>(value * 10 + digit);
      ++pos_;
    }
    out = value;
    return true;
  }

  RateLimitItem ParseOne(bool first, std::optional<Error>& error) {
    RateLimitItem item;
    SkipSpace();
    if (AtEnd()) {
      error = first ? Fail("no limit given; expected e.g. \"10 per minute\" or \"200/day;50/hour\"")
                    : Fail("expected another limit after the separator");
      return item;
    }
    if (!TakeNumber(kMaxAmount, item.amount)) {
      error = Fail("expected a whole number of requests (ASCII digits)");
      return item;
    }
    SkipSpace();
    if (!AtEnd() && text_[pos_] == '/') {
      ++pos_;
    } else if (!TakeWord("per")) {
      error = Fail("expected \"per\" or \"/\" after the amount");
      return item;
    }
    SkipSpace();
    std::int64_t multiples = 0;
    const bool has_multiples = TakeNumber(std::numeric_limits<std::int64_t>::max(), multiples);
    SkipSpace();
    bool has_unit = false;
    for (const UnitName& unit : kUnits) {
      if (TakeWord(unit.name)) {
        item.granularity = unit.granularity;
        has_unit = true;
        break;
      }
    }
    if (!has_unit) {
      error = Fail("expected a time unit: second, minute, hour, day, month or year");
      return item;
    }
    // Plural 's'. Python's case-insensitive matching also lets U+017F (long s) stand for it.
    if (!AtEnd() && LowerAscii(text_[pos_]) == 's') {
      ++pos_;
    } else if (text_.substr(pos_, 2) == "\xC5\xBF") {
      pos_ += 2;
    }
    SkipSpace();
    // `limits` reads a multiples of 0 as "not given", i.e. 1. Periods are kept within 64 bits of
    // seconds: beyond that (hundreds of billions of years) a longer period changes nothing.
    if (!has_multiples || multiples == 0) multiples = 1;
    item.multiples = std::min(
        multiples, std::numeric_limits<std::int64_t>::max() / GranularitySeconds(item.granularity));
    return item;
  }

  Error Fail(std::string_view what) const {
    std::string message = "invalid rate limit " + Quote(text_) + ": " + std::string(what);
    if (AtEnd()) {
      if (!text_.empty()) message += " at the end of the text";
    } else {
      message += " at " + Quote(text_.substr(pos_, 24)) + " (offset " + std::to_string(pos_) + ")";
    }
    return MakeError(ErrorKind::kInvalidArgument, std::move(message));
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

}  // namespace

std::int64_t GranularitySeconds(Granularity g) {
  switch (g) {
    case Granularity::kSecond:
      return 1;
    case Granularity::kMinute:
      return 60;
    case Granularity::kHour:
      return 3600;
    case Granularity::kDay:
      return 86400;
    case Granularity::kMonth:
      return 30 * 86400;
    case Granularity::kYear:
      return 360 * 86400;
  }
  return 1;
}

const char* GranularityName(Granularity g) {
  switch (g) {
    case Granularity::kSecond:
      return "second";
    case Granularity::kMinute:
      return "minute";
    case Granularity::kHour:
      return "hour";
    case Granularity::kDay:
      return "day";
    case Granularity::kMonth:
      return "month";
    case Granularity::kYear:
      return "year";
  }
  return "second";
}

std::string AmountToString(Amount amount) {
  if (amount <= std::numeric_limits<std::uint64_t>::max()) {
    return std::to_string(static_cast<std::uint64_t>(amount));
  }
  char digits[40];
  std::size_t n = 0;
  while (amount != 0) {
    digits[n++] = static_cast<char>('0' + static_cast<int>(amount % 10));
    amount /= 10;
  }
  std::reverse(digits, digits + n);
  return std::string(digits, n);
}

std::string RateLimitItem::ToString() const {
  return AmountToString(amount) + " per " + std::to_string(multiples) + " " +
         GranularityName(granularity);
}

std::string RateLimitItem::Key() const {
  return AmountToString(amount) + "/" + std::to_string(multiples) + "/" +
         GranularityName(granularity);
}

Result<std::vector<RateLimitItem>> ParseLimits(std::string_view text) {
  return Scanner(text).ParseAll();
}

}  // namespace staple::ratelimit
