#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace staple::chat {

// One dispatched server-sent event.
struct SseEvent {
  std::string event;  // the `event:` field; empty means "message"
  std::string data;   // the `data:` lines joined with '\n'
  // Offset just past the blank line that ended this event, within the bytes of the Feed() call
  // that completed it. Lets a relay split its output exactly between two events.
  std::size_t end = 0;
};

// An incremental parser for text/event-stream bodies (the WHATWG "event stream interpretation"):
// lines end in LF, CRLF or CR, and a line ending may be split across two Feed() calls; lines
// starting with ':' are comments; `data:` lines accumulate; a blank line dispatches the event
// (an event without data lines is dropped); `id:` and `retry:` are accepted and ignored. A leading
// UTF-8 byte-order mark is skipped. Not thread-safe.
class SseParser {
 public:
  // `max_event_bytes` bounds a single line and a single event's data (0 = no limit).
  explicit SseParser(std::size_t max_event_bytes = 4 * 1024 * 1024)
      : max_event_bytes_(max_event_bytes) {}

  // Parses the next body bytes and appends the events they complete to `out`. Fails with
  // kUpstream once a line or an event exceeds the limit; the parser is then unusable.
  Status Feed(std::string_view bytes, std::vector<SseEvent>& out);

  // Offset just past the last blank line (the end of an event, dispatched or not) within the
  // bytes of the last Feed() call; std::nullopt when they held none. Bytes up to there can be
  // relayed without cutting an event in two.
  std::optional<std::size_t> boundary() const { return boundary_; }

  // True when bytes of an unfinished event are held. A body that ends now loses them: the
  // specification drops an event that is not followed by a blank line.
  bool has_partial_event() const { return !line_.empty() || has_data_ || !event_.empty(); }

 private:
  void ProcessLine(std::size_t end, std::vector<SseEvent>& out);

  std::size_t max_event_bytes_;
  std::string line_;      // the current line, without its ending
  bool skip_lf_ = false;  // the previous byte was CR: a following LF belongs to it
  bool at_start_ = true;  // nothing parsed yet (for the byte-order mark)
  bool failed_ = false;
  std::optional<std::size_t> boundary_;
  std::string data_;       // data of the event being built
  bool has_data_ = false;  // at least one data line was seen
  std::string event_;      // event type of the event being built
};

}  // namespace staple::chat
