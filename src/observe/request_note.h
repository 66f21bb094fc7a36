#pragma once

#include <cstdint>
#include <string>
#include <string_view>

// What a request's handling learned that its log line should say: which conversation and model,
// which upstream answered and how fast, the tokens, and why the request failed. The server owns
// one per request (http::Request::note) and writes it in the access line once the answer is out
// (DESIGN.md §9, "One log line per request"); the turn pipeline fills it through TurnRequest::note.
// Plain values, one coroutine: no locking.
namespace staple::observe {

struct RequestNote {
  std::string conversation;         // the conversation (or response chain) the turn belongs to
  std::string model;                // as the client asked for it
  std::string upstream;             // the upstream that answered ("" when there is one)
  std::int64_t upstream_ms = -1;    // time spent waiting for the upstream; -1: not asked
  std::int64_t prompt_tokens = -1;  // as the upstream reported them; -1: not reported
  std::int64_t completion_tokens = -1;
  // Why the request failed on Staple's or the upstream's side (upstream status and message,
  // timeout kind, broken stream, storage error); "" when it did not. The first reason stays.
  std::string failure;

  void Fail(std::string_view why) {
    if (failure.empty()) failure = why;
  }
};

}  // namespace staple::observe
