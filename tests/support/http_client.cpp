#include "http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <mutex>
#include <stdexcept>

namespace staple::testing {
namespace {

std::string Lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

std::string Trim(std::string_view text) {
  std::size_t begin = 0;
  std::size_t end = text.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
  return std::string(text.substr(begin, end - begin));
}

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

bool HasHeader(const Headers& headers, const std::string& name) {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& header) { return Lower(header.first) == Lower(name); });
}

}  // namespace

std::optional<std::string> HttpResponse::Header(const std::string& name) const {
  auto it = headers.find(Lower(name));
  if (it == headers.end()) return std::nullopt;
  return it->second;
}

nlohmann::json HttpResponse::Json() const {
  return nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
}

std::vector<std::string> ParseSseData(const std::string& body) {
  std::vector<std::string> events;
  std::string data;
  bool has_data = false;
  std::size_t pos = 0;
  while (pos <= body.size()) {
    std::size_t end = body.find('\n', pos);
    if (end == std::string::npos) end = body.size();
    std::string_view line(body.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      if (has_data) events.push_back(data);
      data.clear();
      has_data = false;
    } else if (line.starts_with("data:")) {
      std::string_view value = line.substr(5);
      if (value.starts_with(' ')) value.remove_prefix(1);
      if (has_data) data += '\n';
      data += value;
      has_data = true;
    }
    pos = end + 1;
  }
  return events;
}

struct HttpClient::Transfer {
  HttpResponse* response = nullptr;
  StreamResponse* stream = nullptr;  // set for Stream()
  std::optional<std::size_t> abort_after;
  bool aborted = false;
};

HttpClient::HttpClient(std::chrono::milliseconds timeout) : curl_(nullptr), timeout_(timeout) {
  GlobalInit();
  curl_ = curl_easy_init();
  if (curl_ == nullptr) throw std::runtime_error("curl_easy_init failed");
}

HttpClient::~HttpClient() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

HttpResponse HttpClient::Request(const std::string& method, const std::string& url,
                                 const std::string& body, const Headers& headers) {
  HttpResponse response;
  Transfer transfer;
  transfer.response = &response;
  Perform(method, url, body, headers, transfer);
  return response;
}

HttpResponse HttpClient::Get(const std::string& url, const Headers& headers) {
  return Request("GET", url, "", headers);
}

HttpResponse HttpClient::PostJson(const std::string& url, const std::string& body,
                                  const Headers& headers) {
  Headers all = headers;
  if (!HasHeader(all, "Content-Type")) all.emplace_back("Content-Type", "application/json");
  return Request("POST", url, body, all);
}

HttpResponse HttpClient::PostJson(const std::string& url, const nlohmann::json& body,
                                  const Headers& headers) {
  return PostJson(url, body.dump(), headers);
}

StreamResponse HttpClient::Stream(const std::string& method, const std::string& url,
                                  const std::string& body, const Headers& headers,
                                  std::optional<std::size_t> abort_after_bytes) {
  StreamResponse response;
  Transfer transfer;
  transfer.response = &response;
  transfer.stream = &response;
  transfer.abort_after = abort_after_bytes;
  response.start = std::chrono::steady_clock::now();
  Perform(method, url, body, headers, transfer);
  response.aborted = transfer.aborted;
  return response;
}

void HttpClient::Perform(const std::string& method, const std::string& url, const std::string& body,
                         const Headers& headers, Transfer& transfer) {
  CURL* curl = static_cast<CURL*>(curl_);
  curl_easy_reset(curl);  // keeps the connection cache

  char error_buffer[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_.count()));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);

  const bool sends_body = !body.empty() || method == "POST" || method == "PUT" || method == "PATCH";
  if (method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (sends_body) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    if (method != "POST") curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  } else if (method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  }

  curl_slist* header_list = nullptr;
  for (const auto& [name, value] : headers) {
    // "Name:" removes a header curl would add; "Name;" sends it empty.
    std::string line = value.empty() ? name + ";" : name + ": " + value;
    header_list = curl_slist_append(header_list, line.c_str());
  }
  if (!HasHeader(headers, "Expect")) header_list = curl_slist_append(header_list, "Expect:");
  if (sends_body && !HasHeader(headers, "Content-Type")) {
    header_list = curl_slist_append(header_list, "Content-Type:");
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, header_list);

  auto on_header = +[](char* data, size_t size, size_t count, void* user) -> size_t {
    auto* t = static_cast<Transfer*>(user);
    std::string_view line(data, size * count);
    if (line.starts_with("HTTP/")) {
      t->response->headers.clear();  // a new response (after "100 Continue" or a redirect)
    } else if (auto colon = line.find(':'); colon != std::string_view::npos) {
      t->response->headers.emplace(Lower(Trim(line.substr(0, colon))),
                                   Trim(line.substr(colon + 1)));
    }
    return size * count;
  };
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &transfer);

  auto on_body = +[](char* data, size_t size, size_t count, void* user) -> size_t {
    auto* t = static_cast<Transfer*>(user);
    const std::size_t n = size * count;
    t->response->body.append(data, n);
    if (t->stream != nullptr) {
      t->stream->chunks.push_back(Chunk{std::chrono::steady_clock::now(), std::string(data, n)});
      if (t->abort_after && t->response->body.size() >= *t->abort_after) {
        t->aborted = true;
        return 0;  // makes curl stop with CURLE_WRITE_ERROR and drop the connection
      }
    }
    return n;
  };
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);

  CURLcode code = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  transfer.response->status = status;
  if (code != CURLE_OK && !transfer.aborted) {
    transfer.response->error = curl_easy_strerror(code);
    if (error_buffer[0] != '\0') transfer.response->error += std::string(": ") + error_buffer;
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, nullptr);
  curl_slist_free_all(header_list);
}

}  // namespace staple::testing
