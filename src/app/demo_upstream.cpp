#include "app/demo_upstream.h"

#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "fake_logic.h"

namespace staple::app {
namespace {

constexpr int kStreamChunks = 6;

// What the demo answers to one request: a whole body, or the events of a stream.
struct DemoAnswer {
  long status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::string> events;  // non-empty: a text/event-stream answer
};

std::int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string NextId() {
  static std::atomic<std::uint64_t> next{1};
  return "chatcmpl-demo-" + std::to_string(next.fetch_add(1, std::memory_order_relaxed));
}

DemoAnswer NotFound(std::string_view what) {
  return {404, "application/json", fake::ErrorBody(what, "invalid_request_error"), {}};
}

DemoAnswer Answer(const upstream::Request& request) {
  const std::string_view target = request.path;
  const std::string_view path = target.substr(0, target.find('?'));
  if (path == "/chat/completions" && request.method == "POST") {
    fake::ChatParse parsed = fake::ParseChatRequest(request.body);
    if (!parsed.plan) {
      return {400, "application/json", fake::ErrorBody(parsed.error, "invalid_request_error"), {}};
    }
    if (parsed.plan->stream) {
      DemoAnswer answer{200, "text/event-stream", {}, {}};
      answer.events =
          fake::BuildStreamEvents(*parsed.plan, NextId(), UnixNow(), kStreamChunks).events;
      return answer;
    }
    return {200, "application/json", fake::CompletionBody(*parsed.plan, NextId(), UnixNow()), {}};
  }
  if (path == "/models" && request.method == "GET") {
    return {200, "application/json", fake::ModelsBody(), {}};
  }
  constexpr std::string_view kModelPrefix = "/models/";
  if (path.starts_with(kModelPrefix) && request.method == "GET") {
    const auto id = path.substr(kModelPrefix.size());
    if (auto body = fake::ModelBody(id)) return {200, "application/json", std::move(*body), {}};
    return NotFound("The model '" + std::string(id) + "' does not exist");
  }
  if (path == "/embeddings" && request.method == "POST") {
    fake::EmbeddingsReply reply = fake::EmbeddingsBody(request.body);
    if (!reply.error.empty()) {
      return {400, "application/json", fake::ErrorBody(reply.error, "invalid_request_error"), {}};
    }
    return {200, "application/json", std::move(reply.body), {}};
  }
  return NotFound("The demo upstream does not answer " + request.method + " " + std::string(path));
}

// The answer's body as a stream: each event (or the whole body) is one piece.
class DemoStream final : public upstream::Stream {
 public:
  DemoStream(DemoAnswer answer, std::chrono::milliseconds interval)
      : status_(answer.status), content_type_(std::move(answer.content_type)), interval_(interval) {
    if (answer.events.empty()) {
      pieces_.push_back(std::move(answer.body));
    } else {
      pieces_ = std::move(answer.events);
    }
  }

  long status() const override { return status_; }
  const std::string& content_type() const override { return content_type_; }
  const upstream::Headers& headers() const override { return headers_; }

  net::awaitable<Result<std::optional<std::string>>> Next() override {
    if (next_ == pieces_.size()) co_return std::optional<std::string>();
    if (next_ > 0 && interval_.count() > 0) {
      net::steady_timer timer(co_await net::this_coro::executor, interval_);
      co_await timer.async_wait(net::use_awaitable);
    }
    co_return std::optional<std::string>(std::move(pieces_[next_++]));
  }

 private:
  long status_;
  std::string content_type_;
  upstream::Headers headers_;
  std::chrono::milliseconds interval_;
  std::vector<std::string> pieces_;
  std::size_t next_ = 0;
};

}  // namespace

net::awaitable<Result<upstream::Response>> DemoUpstream::Send(upstream::Request request) {
  DemoAnswer answer = Answer(request);
  upstream::Response response;
  response.status = answer.status;
  response.content_type = std::move(answer.content_type);
  if (answer.events.empty()) {
    response.body = std::move(answer.body);
  } else {
    for (auto& event : answer.events) response.body += event;
  }
  co_return response;
}

net::awaitable<Result<std::unique_ptr<upstream::Stream>>> DemoUpstream::OpenStream(
    upstream::Request request) {
  std::unique_ptr<upstream::Stream> stream =
      std::make_unique<DemoStream>(Answer(request), chunk_interval_);
  co_return stream;
}

}  // namespace staple::app
