#pragma once

#include <vector>

#include "api/admission.h"
#include "api/token_limits.h"
#include "chat/chain_cache.h"
#include "chat/turn.h"
#include "http/router.h"
#include "ratelimit/rate_limiter.h"
#include "store/conversation_store.h"

namespace staple::api {

// What the Responses and Conversations routes need, chosen once at start-up. References outlive
// the router.
struct ResponsesDependencies {
  chat::TurnPipeline& pipeline;
  store::ConversationStore& store;
  const Admission& admission;
  const TokenLimits& tokens;
  std::vector<ratelimit::RateLimitItem> responses_limits;  // per client on POST /v1/responses
  // Recent response chains in memory (null: every chain is read from the store).
  chat::ChainCache* chains = nullptr;
};

// Adds the Responses API (POST /v1/responses, GET and DELETE /v1/responses/{id},
// GET /v1/responses/{id}/input_items) and the Conversations API (/v1/conversations,
// /v1/conversations/{id}, /v1/conversations/{id}/items, /v1/conversations/{id}/items/{item_id}).
// Every answer has OpenAI's shape; every route is admitted like the other /v1 routes, and with
// client keys a key sees only its own responses and conversations (another key's id is a 404).
void RegisterResponsesRoutes(http::Router& router, ResponsesDependencies deps);

}  // namespace staple::api
