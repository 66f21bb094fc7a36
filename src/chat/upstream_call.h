#pragma once

#include <string>
#include <string_view>

#include "common/result.h"
#include "observe/metrics.h"
#include "upstream/client.h"

namespace staple::chat {

// The upstream request both conversation paths send: POST /chat/completions with `body`, the
// caller's request id, and for a stream an SSE Accept header. A non-streaming request is
// answer_at_once: bounded by the total timeout, not the first-byte timeout.
upstream::Request ChatCompletionsRequest(std::string body, std::string_view request_id,
                                         bool stream);

// Maps a failed upstream exchange to the services' error: counts it (upstream error, failed
// turn), keeps kTimeout apart from every other failure (kUpstream), and scrubs `api_key` from the
// message.
Error UpstreamFailure(observe::Metrics& metrics, const Error& error, std::string_view api_key);

// `text` with every occurrence of `secret` (when at least 4 bytes long) replaced by "***".
std::string ScrubSecret(std::string text, std::string_view secret);

}  // namespace staple::chat
