#include <string>

#include "ratelimit/rate_limiter.h"

namespace staple::ratelimit {

namespace {

// Lower case, '_' read as '-', surrounding ASCII blanks dropped: environment values are often
// written as FIXED_WINDOW or with a stray space.
std::string Normalize(std::string_view text) {
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!text.empty() && blank(text.front())) text.remove_prefix(1);
  while (!text.empty() && blank(text.back())) text.remove_suffix(1);
  std::string out(text);
  for (char& c : out) {
    if (c == '_') {
      c = '-';
    } else if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

}  // namespace

Result<Strategy> ParseStrategy(std::string_view text) {
  const std::string name = Normalize(text);
  for (Strategy s :
       {Strategy::kFixedWindow, Strategy::kMovingWindow, Strategy::kSlidingWindowCounter}) {
    if (name == StrategyName(s)) return s;
  }
  return MakeError(ErrorKind::kInvalidArgument,
                   "invalid rate limit strategy \"" + std::string(text) +
                       "\": expected fixed-window, moving-window or sliding-window-counter");
}

const char* StrategyName(Strategy s) {
  switch (s) {
    case Strategy::kFixedWindow:
      return "fixed-window";
    case Strategy::kMovingWindow:
      return "moving-window";
    case Strategy::kSlidingWindowCounter:
      return "sliding-window-counter";
  }
  return "fixed-window";
}

}  // namespace staple::ratelimit
