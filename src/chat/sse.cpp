#include "chat/sse.h"

namespace staple::chat {
namespace {

constexpr std::string_view kByteOrderMark = "\xEF\xBB\xBF";

}  // namespace

Status SseParser::Feed(std::string_view bytes, std::vector<SseEvent>& out) {
  if (failed_) return MakeError(ErrorKind::kUpstream, "event stream parser failed earlier");
  boundary_.reset();
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (skip_lf_) {
      skip_lf_ = false;
      if (c == '\n') continue;  // second half of a CRLF split across two calls
    }
    if (c == '\r' && i + 1 < bytes.size() && bytes[i + 1] == '\n') {
      ++i;  // a whole CRLF: the line ends after the LF
      ProcessLine(i + 1, out);
    } else if (c == '\r' || c == '\n') {
      skip_lf_ = c == '\r';
      ProcessLine(i + 1, out);
    } else {
      line_ += c;
    }
    if (max_event_bytes_ != 0 &&
        (line_.size() > max_event_bytes_ || data_.size() > max_event_bytes_)) {
      failed_ = true;
      return MakeError(ErrorKind::kUpstream,
                       "upstream event exceeds " + std::to_string(max_event_bytes_) + " bytes");
    }
  }
  return Ok();
}

void SseParser::ProcessLine(std::size_t end, std::vector<SseEvent>& out) {
  std::string_view line = line_;
  if (at_start_) {
    at_start_ = false;
    if (line.substr(0, kByteOrderMark.size()) == kByteOrderMark) {
      line.remove_prefix(kByteOrderMark.size());
    }
  }

  if (line.empty()) {
    // A blank line dispatches the event being built, if it has data.
    boundary_ = end;
    if (has_data_) {
      out.push_back(SseEvent{std::move(event_), std::move(data_), end});
    }
    event_.clear();
    data_.clear();
    has_data_ = false;
  } else if (line.front() != ':') {
    const auto colon = line.find(':');
    const std::string_view field = line.substr(0, colon);
    std::string_view value;
    if (colon != std::string_view::npos) {
      value = line.substr(colon + 1);
      if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    }
    if (field == "data") {
      if (has_data_) data_ += '\n';
      data_.append(value);
      has_data_ = true;
    } else if (field == "event") {
      event_.assign(value);
    }
    // "id", "retry" and unknown fields do not matter to a relay.
  }
  line_.clear();
}

}  // namespace staple::chat
