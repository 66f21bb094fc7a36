#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/admission.h"
#include "api/token_limits.h"
#include "chat/openai_proxy.h"
#include "http/router.h"
#include "ratelimit/rate_limiter.h"
#include "upstream/client.h"

namespace staple::api {

// The request header naming a stored conversation, and the response header returning it.
inline constexpr const char* kConversationHeader = "X-Staple-Conversation";
inline constexpr std::size_t kMaxConversationIdLength = 256;

// What the OpenAI-compatible handlers need, chosen once at start-up. References outlive the
// router.
struct OpenAIDependencies {
  chat::OpenAIProxy& proxy;
  const Admission& admission;
  const TokenLimits& tokens;
  std::vector<ratelimit::RateLimitItem> chat_limits;  // per client on /v1/chat/completions
};

// Adds POST /v1/chat/completions, GET /v1/models and the pass-through of every other /v1 path
// (README "OpenAI-compatible API"). Every error they produce has OpenAI's shape.
void RegisterOpenAIRoutes(http::Router& router, OpenAIDependencies deps);

// Request checks of POST /v1/chat/completions, as a plain function (tested without a server).
struct OpenAIChatRequest {
  chat::ChatBody body;
  std::optional<std::string> conversation_id;  // the X-Staple-Conversation header, when given
};
// Validates Content-Type, the conversation header and the body into `parsed`; when invalid,
// returns the 400/415 answer instead.
std::optional<http::Response> ParseOpenAIChatRequest(const http::Request& request,
                                                     OpenAIChatRequest& parsed);

// The client's answer for an upstream response: its status, body and content type. An error status
// whose body is not OpenAI's error shape gets that shape (same status) so that SDKs can read it.
http::Response PassThrough(const upstream::Response& upstream);

// The answer for an error status of a stream request: an ordinary response (PassThrough of its
// whole body), or the failure to read that body. Reads and ends `stream`.
net::awaitable<http::Response> StreamErrorAnswer(std::unique_ptr<chat::TurnStream> stream);

// The answer for a failure of chat::OpenAIProxy: 502 (upstream unreachable or invalid), 504
// (upstream timeout), 503 (store), 500 (configuration), in OpenAI's shape.
http::Response ProxyError(const Error& error);

}  // namespace staple::api
