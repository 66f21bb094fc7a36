// The upstream's event stream: whatever the bytes and however the network splits them, the parser
// yields the same events (the first input byte picks the split point and the size limit), each
// event's `end` lies within the bytes of the Feed() call that completed it, and boundary() too.
#include <optional>
#include <string>
#include <vector>

#include "chat/sse.h"
#include "fuzz_check.h"

namespace {

using staple::chat::SseEvent;
using staple::chat::SseParser;

struct Outcome {
  bool failed = false;
  std::vector<SseEvent> events;
  bool partial = false;
};

// Feeds `chunks` in order, checking the offsets each call reports.
Outcome Run(const std::vector<std::string_view>& chunks, std::size_t limit) {
  SseParser parser(limit);
  Outcome outcome;
  for (const auto chunk : chunks) {
    const std::size_t before = outcome.events.size();
    const auto status = parser.Feed(chunk, outcome.events);
    if (!status) {
      outcome.failed = true;
      return outcome;
    }
    std::size_t previous_end = 0;
    for (std::size_t i = before; i < outcome.events.size(); ++i) {
      const auto& event = outcome.events[i];
      FUZZ_CHECK(event.end >= 1 && event.end <= chunk.size());
      FUZZ_CHECK(event.end > previous_end);
      // An event ends with a line ending.
      FUZZ_CHECK(chunk[event.end - 1] == '\n' || chunk[event.end - 1] == '\r');
      if (limit != 0) FUZZ_CHECK(event.data.size() <= limit);
      previous_end = event.end;
    }
    if (const auto boundary = parser.boundary()) {
      FUZZ_CHECK(*boundary >= previous_end && *boundary <= chunk.size());
    } else {
      FUZZ_CHECK(before == outcome.events.size());  // an event ends at a boundary
    }
  }
  outcome.partial = parser.has_partial_event();
  return outcome;
}

bool SameEvents(const std::vector<SseEvent>& a, const std::vector<SseEvent>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].event != b[i].event || a[i].data != b[i].data) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto text = staple::fuzz::AsText(data + 1, size - 1);
  const std::size_t split = data[0] % (text.size() + 1);
  // Half the inputs run without a limit, the others with a small one so that it is reached.
  const std::size_t limit = (data[0] & 0x80) != 0 ? 0 : 8 + data[0] % 64;

  const Outcome whole = Run({text}, limit);
  const Outcome halves = Run({text.substr(0, split), text.substr(split)}, limit);
  FUZZ_CHECK(whole.failed == halves.failed);
  if (whole.failed) return 0;
  FUZZ_CHECK(SameEvents(whole.events, halves.events));
  FUZZ_CHECK(whole.partial == halves.partial);

  // One byte at a time: the hardest split for CRLF and the byte-order mark.
  std::vector<std::string_view> bytes;
  for (std::size_t i = 0; i < text.size(); ++i) bytes.push_back(text.substr(i, 1));
  const Outcome single = Run(bytes, limit);
  FUZZ_CHECK(!single.failed);
  FUZZ_CHECK(SameEvents(whole.events, single.events));
  FUZZ_CHECK(whole.partial == single.partial);
  return 0;
}
