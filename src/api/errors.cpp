#include "api/errors.h"

namespace staple::api {

http::Response SeedError(int status, std::string_view message, std::string_view type) {
  nlohmann::json body = {{"error", message}};
  if (!type.empty()) body["type"] = type;
  return http::JsonResponse(status, body);
}

http::Response OpenAIError(int status, std::string_view message, std::string_view type,
                           std::string_view code) {
  nlohmann::json error = {{"message", message}, {"type", type}, {"code", nullptr}};
  if (!code.empty()) error["code"] = code;
  return http::JsonResponse(status, {{"error", error}});
}

http::Response FormatError(int status, std::string_view message, std::string_view path) {
  if (path.rfind("/v1/", 0) == 0) {
    const char* type = status == 404   ? "not_found_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    return OpenAIError(status, message, type);
  }
  return SeedError(status, message);
}

}  // namespace staple::api
