#include "api/admin.h"

#include <chrono>
#include <memory>
#include <utility>
#include <variant>

#include "api/auth.h"
#include "api/errors.h"
#include "api/handlers.h"
#include "api/seed_request.h"
#include "observe/log.h"

namespace staple::api {
namespace {

using nlohmann::json;

constexpr int kUsageDays = 30;

struct AdminContext {
  keys::KeyRegistry& registry;
  const std::string admin_hash;  // SHA-256 of the admin key; "" when disabled
  store::ConversationStore* store = nullptr;
  const observe::StatsHistory* stats = nullptr;
};

http::Response StoreFailure(const Error& error) {
  switch (error.kind) {
    case ErrorKind::kNotFound:
      return SeedError(404, error.message);
    case ErrorKind::kInvalidArgument:
      return SeedError(400, error.message);
    default:
      return FailureAnswer(error, ErrorStyle::kSeed);
  }
}

// Null when the request carries the admin key; else the answer to send.
std::optional<http::Response> Guard(const AdminContext& context, const http::Request& request) {
  if (context.admin_hash.empty()) {
    return SeedError(404, "The admin API is disabled: set STAPLE_ADMIN_KEY to enable it");
  }
  const std::string_view presented = PresentedSecret(request);
  if (!presented.empty() && keys::SameHash(keys::HashSecret(presented), context.admin_hash)) {
    return std::nullopt;
  }
  observe::Warn("admin authentication failed",
                {{"client", request.peer_address}, {"request_id", request.request_id}});
  http::Response response = SeedError(401, "Invalid admin key");
  response.headers.Add("WWW-Authenticate", "Bearer");
  return response;
}

std::optional<http::Response> ParseBody(const http::Request& request, json& body) {
  body = json::parse(request.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    return SeedError(400, "Request body must be a JSON object");
  }
  return std::nullopt;
}

using AdminAction =
    std::function<net::awaitable<http::Response>(AdminContext& context, http::Request& request)>;

http::Handler Guarded(std::shared_ptr<AdminContext> context, AdminAction action) {
  return [context, action](http::Request& request) -> net::awaitable<http::Response> {
    if (auto refused = Guard(*context, request)) co_return std::move(*refused);
    http::Response response = co_await action(*context, request);
    co_return response;
  };
}

net::awaitable<http::Response> CreateKey(AdminContext& context, http::Request& request) {
  json body;
  if (auto invalid = ParseBody(request, body)) co_return std::move(*invalid);
  keys::KeyRecord record;
  if (Status applied = ApplyKeyFields(body, record, /*creating=*/true); !applied) {
    co_return SeedError(400, applied.error().message);
  }
  auto created = co_await context.registry.Create(std::move(record));
  if (!created) co_return StoreFailure(created.error());
  observe::Info("key created",
                {{"key_id", created->record.id}, {"key_name", created->record.name}});
  json out = KeyJson(created->record);
  out["key"] = created->secret;  // shown this once
  co_return http::JsonResponse(201, out);
}

net::awaitable<http::Response> ListKeys(AdminContext& context, http::Request& /*request*/) {
  auto listed = co_await context.registry.List();
  if (!listed) co_return StoreFailure(listed.error());
  json data = json::array();
  for (const auto& record : *listed) data.push_back(KeyJson(record));
  co_return http::JsonResponse(200, {{"object", "list"}, {"data", std::move(data)}});
}

net::awaitable<http::Response> ShowKey(AdminContext& context, http::Request& request) {
  std::string id = request.path_params.at(0);
  auto found = co_await context.registry.Get(id);
  if (!found) co_return StoreFailure(found.error());
  auto usage = co_await context.registry.Usage(std::move(id), kUsageDays);
  if (!usage) co_return StoreFailure(usage.error());
  json out = KeyJson(*found);
  json days = json::array();
  for (const auto& day : *usage) {
    days.push_back({{"day", day.day},
                    {"requests", day.requests},
                    {"prompt_tokens", day.prompt_tokens},
                    {"completion_tokens", day.completion_tokens}});
  }
  out["usage"] = std::move(days);
  co_return http::JsonResponse(200, out);
}

net::awaitable<http::Response> UpdateKey(AdminContext& context, http::Request& request) {
  json body;
  if (auto invalid = ParseBody(request, body)) co_return std::move(*invalid);
  std::string id = request.path_params.at(0);
  auto found = co_await context.registry.Get(std::move(id));
  if (!found) co_return StoreFailure(found.error());
  keys::KeyRecord record = std::move(found).value();
  if (Status applied = ApplyKeyFields(body, record, /*creating=*/false); !applied) {
    co_return SeedError(400, applied.error().message);
  }
  auto updated = co_await context.registry.Update(std::move(record));
  if (!updated) co_return StoreFailure(updated.error());
  observe::Info("key updated", {{"key_id", updated->id}, {"key_name", updated->name}});
  co_return http::JsonResponse(200, KeyJson(*updated));
}

net::awaitable<http::Response> RevokeKey(AdminContext& context, http::Request& request) {
  std::string id = request.path_params.at(0);
  std::string revoked_id = id;
  Status revoked = co_await context.registry.Revoke(std::move(revoked_id));
  if (!revoked) co_return StoreFailure(revoked.error());
  auto found = co_await context.registry.Get(std::move(id));
  if (!found) co_return StoreFailure(found.error());
  observe::Info("key revoked", {{"key_id", found->id}, {"key_name", found->name}});
  co_return http::JsonResponse(200, KeyJson(*found));
}

Status FieldError(const char* field, const char* expected) {
  return MakeError(ErrorKind::kInvalidArgument, std::string(field) + " must be " + expected);
}

}  // namespace

json KeyJson(const keys::KeyRecord& record) {
  json metadata = json::parse(record.metadata, nullptr, false);
  if (metadata.is_discarded()) metadata = json::object();
  return {{"id", record.id},
          {"object", "staple.key"},
          {"name", record.name},
          {"created_at", record.created_at},
          {"expires_at", record.expires_at ? json(*record.expires_at) : json(nullptr)},
          {"revoked", record.revoked},
          {"models", record.allowed_models},
          {"request_limits", record.request_limits},
          {"token_limits", record.token_limits},
          {"metadata", std::move(metadata)}};
}

Status ApplyKeyFields(const json& body, keys::KeyRecord& record, bool creating) {
  if (creating && !body.contains("name")) return FieldError("name", "given");
  for (const auto& [member, value] : body.items()) {
    if (member == "name") {
      if (!value.is_string() || value.get_ref<const std::string&>().empty()) {
        return FieldError("name", "a non-empty string");
      }
      record.name = value.get<std::string>();
    } else if (member == "expires_at") {
      if (value.is_null()) {
        record.expires_at.reset();
      } else if (value.is_number_integer()) {
        record.expires_at = value.get<std::int64_t>();
      } else {
        return FieldError("expires_at", "a Unix time in seconds or null");
      }
    } else if (member == "models") {
      if (!value.is_array()) return FieldError("models", "an array of model names");
      std::vector<std::string> models;
      for (const auto& model : value) {
        if (!model.is_string()) return FieldError("models", "an array of model names");
        models.push_back(model.get<std::string>());
      }
      record.allowed_models = std::move(models);
    } else if (member == "request_limits" || member == "token_limits") {
      if (!value.is_string() && !value.is_null()) {
        return FieldError(member == "request_limits" ? "request_limits" : "token_limits",
                          "a string in the limits notation, e.g. \"100 per minute\"");
      }
      (member == "request_limits" ? record.request_limits : record.token_limits) =
          value.is_null() ? std::string() : value.get<std::string>();
    } else if (member == "metadata") {
      if (!value.is_object()) return FieldError("metadata", "a JSON object");
      record.metadata = value.dump(-1, ' ', false, json::error_handler_t::replace);
    } else {
      return MakeError(ErrorKind::kInvalidArgument, "unknown field '" + member + "'");
    }
  }
  return keys::Validate(record);
}

namespace {

net::awaitable<http::Response> Stats(AdminContext& context, http::Request& /*request*/) {
  co_return http::JsonResponse(200, context.stats->ToJson(std::chrono::system_clock::now()));
}

// The conversation id of the path (decoded) and the owner of the query; a 400 answer when the id
// is too long.
std::variant<std::pair<std::string, std::string>, http::Response> ConversationOf(
    const http::Request& request) {
  std::string id = DecodePathSegment(request.path_params.at(0));
  if (id.size() > kMaxUserIdLength) {
    return SeedError(400, "the conversation id is too long (at most " +
                              std::to_string(kMaxUserIdLength) + " bytes)");
  }
  std::string owner(QueryValue(request.query, "owner").value_or(""));
  return std::make_pair(std::move(owner), std::move(id));
}

net::awaitable<http::Response> ShowConversation(AdminContext& context, http::Request& request) {
  auto target = ConversationOf(request);
  if (auto* refused = std::get_if<http::Response>(&target)) co_return std::move(*refused);
  auto& [owner, id] = std::get<0>(target);
  http::Response response =
      co_await ListConversationMessages(*context.store, request, std::move(owner), std::move(id));
  co_return response;
}

net::awaitable<http::Response> DeleteConversation(AdminContext& context, http::Request& request) {
  auto target = ConversationOf(request);
  if (auto* refused = std::get_if<http::Response>(&target)) co_return std::move(*refused);
  auto& [owner, id] = std::get<0>(target);
  observe::Info("conversation deleted by the admin API",
                {{"owner", owner}, {"request_id", request.request_id}});
  http::Response response =
      co_await DeleteConversationMessages(*context.store, std::move(owner), std::move(id));
  co_return response;
}

}  // namespace

void RegisterAdminRoutes(http::Router& router, keys::KeyRegistry& registry,
                         AdminSettings settings) {
  auto context = std::make_shared<AdminContext>(AdminContext{
      registry, settings.admin_key.empty() ? std::string() : keys::HashSecret(settings.admin_key),
      settings.store, settings.stats});
  if (settings.stats != nullptr) {
    router.Add("GET", "/admin/stats", "/admin/stats", Guarded(context, Stats));
  }
  if (settings.store != nullptr) {
    router.Add("GET", "/admin/conversations/{id}", "/admin/conversations",
               Guarded(context, ShowConversation));
    router.Add("DELETE", "/admin/conversations/{id}", "/admin/conversations",
               Guarded(context, DeleteConversation));
  }
  router.Add("POST", "/admin/keys", "/admin/keys", Guarded(context, CreateKey));
  router.Add("GET", "/admin/keys", "/admin/keys", Guarded(context, ListKeys));
  router.Add("GET", "/admin/keys/{id}", "/admin/keys", Guarded(context, ShowKey));
  router.Add("PATCH", "/admin/keys/{id}", "/admin/keys", Guarded(context, UpdateKey));
  router.Add("DELETE", "/admin/keys/{id}", "/admin/keys", Guarded(context, RevokeKey));
}

}  // namespace staple::api
