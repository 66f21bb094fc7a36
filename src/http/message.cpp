#include "http/message.h"

#include <algorithm>
#include <cctype>

namespace staple::http {

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

void Headers::Set(std::string_view name, std::string value) {
  std::erase_if(fields_, [name](const auto& f) { return EqualsIgnoreCase(f.first, name); });
  fields_.emplace_back(std::string(name), std::move(value));
}

std::optional<std::string_view> Headers::Get(std::string_view name) const {
  for (const auto& [n, v] : fields_) {
    if (EqualsIgnoreCase(n, name)) return std::string_view(v);
  }
  return std::nullopt;
}

Response JsonResponse(int status, const nlohmann::json& body) {
  Response response;
  response.status = status;
  response.headers.Add("Content-Type", "application/json");
  response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return response;
}

Response HtmlPage(std::string_view html) {
  Response response;
  response.headers.Add("Content-Type", "text/html; charset=utf-8");
  response.headers.Add("Cache-Control", "no-cache");
  response.body = html;
  return response;
}

}  // namespace staple::http
