#include "gateway_test.h"

#include <regex>
#include <thread>

namespace staple::testing {

std::unique_ptr<StapleServer> GatewayTest::StartStaple(
    const std::map<std::string, std::string>& env,
    std::optional<std::filesystem::path> working_dir) {
  StapleOptions options;
  options.env = UpstreamEnv(fake_);
  for (const auto& [name, value] : env) options.env[name] = value;
  options.working_dir = std::move(working_dir);
  return std::make_unique<StapleServer>(std::move(options));
}

HttpResponse GatewayTest::Complete(const StapleServer& staple, const std::string& prompt,
                                   const std::optional<std::string>& user_id,
                                   const Headers& headers) {
  nlohmann::json body = {{"prompt", prompt}};
  if (user_id) body["user_id"] = *user_id;
  return client_.PostJson(staple.url() + "/openai-completion", body, headers);
}

nlohmann::json GatewayTest::Turn(const StapleServer& staple, const std::string& prompt,
                                 const std::optional<std::string>& user_id) {
  HttpResponse response = Complete(staple, prompt, user_id);
  nlohmann::json json = response.Json();
  const bool ok = response.status == 200 && json.is_object() && json.contains("user_id") &&
                  json["user_id"].is_string() && json.contains("completion") &&
                  json["completion"].is_string();
  if (!ok) {
    ADD_FAILURE() << "turn \"" << prompt.substr(0, 80) << "\" failed: status " << response.status
                  << " " << response.error << "\nbody: " << response.body.substr(0, 2000);
    return nlohmann::json::object();
  }
  return json;
}

nlohmann::json GatewayTest::LastUpstreamMessages() const {
  std::vector<nlohmann::json> bodies = fake_.chat_bodies();
  if (bodies.empty() || !bodies.back().is_object() || !bodies.back().contains("messages")) {
    return nlohmann::json::array();
  }
  return bodies.back()["messages"];
}

double GatewayTest::Metric(const StapleServer& staple, const std::string& name) {
  return MetricIn(client_.Get(staple.url() + "/metrics").body, name);
}

double MetricIn(const std::string& text, const std::string& name) {
  for (const auto& line : SplitLines(text)) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

bool IsUuidV7(const std::string& text) {
  static const std::regex pattern(
      "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  return std::regex_match(text, pattern);
}

bool IsSeedTimestamp(const std::string& text) {
  static const std::regex pattern(
      "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}$");
  return std::regex_match(text, pattern);
}

bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    pos = end + 1;
  }
  return lines;
}

std::string ErrorMessage(const HttpResponse& response) {
  nlohmann::json json = response.Json();
  if (!json.is_object() || !json.contains("error") || !json["error"].is_string()) return "";
  return json["error"].get<std::string>();
}

}  // namespace staple::testing
