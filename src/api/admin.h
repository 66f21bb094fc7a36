#pragma once

#include <optional>
#include <string>

#include "http/router.h"
#include "keys/keys.h"
#include "observe/stats_history.h"
#include "store/conversation_store.h"

namespace staple::api {

struct AdminSettings {
  // STAPLE_ADMIN_KEY ("" disables the admin API: its routes answer 404).
  std::string admin_key;
  // For the operator console's routes (/admin/stats, /admin/conversations); null: not served.
  store::ConversationStore* store = nullptr;
  const observe::StatsHistory* stats = nullptr;
};

// The key-management API under /admin/keys, guarded by `Authorization: Bearer <STAPLE_ADMIN_KEY>`
// (compared in constant time; a client key never passes):
//   POST   /admin/keys        create: {"name", "expires_at"?, "models"?, "request_limits"?,
//                             "token_limits"?, "metadata"?} -> 201 with the secret ("key"), once
//   GET    /admin/keys        list (never secrets or hashes)
//   GET    /admin/keys/{id}   one key and its usage per day (the last 30 days)
//   PATCH  /admin/keys/{id}   change the fields given ("expires_at": null clears the expiry)
//   DELETE /admin/keys/{id}   revoke (in force on every replica within about a second)
//   GET    /admin/stats       the last hour minute by minute (observe::StatsHistory::ToJson)
//   GET    /admin/conversations/{id}?owner=KEY_ID[&after&limit]   a conversation's messages, of
//                             any owner ("" or absent: the conversations made without keys)
//   DELETE /admin/conversations/{id}?owner=KEY_ID                 deletes them
// Errors are the seed's shape {"error": "..."}: 400 invalid input (naming the field), 401 wrong or
// missing admin key, 404 unknown key, 503 storage.
void RegisterAdminRoutes(http::Router& router, keys::KeyRegistry& registry, AdminSettings settings);

// A key record as the admin API shows it (no secret, no hash).
nlohmann::json KeyJson(const keys::KeyRecord& record);

// Applies the members of `body` (a JSON object) to `record`; kInvalidArgument naming a member of
// the wrong type. `creating`: "name" is required.
Status ApplyKeyFields(const nlohmann::json& body, keys::KeyRecord& record, bool creating);

}  // namespace staple::api
