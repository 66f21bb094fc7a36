#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "upstream/client.h"

namespace staple::testing {

// One scripted upstream exchange: an error instead of a response, or a status, headers and a body
// (for a stream, the body's chunks, then its end, an error or a hang).
struct ScriptedReply {
  std::optional<Error> error;  // the exchange fails before any status (unreachable, timeout)
  long status = 200;
  std::string content_type = "application/json";
  upstream::Headers headers;
  std::string body;                   // Send(): the whole body
  std::vector<std::string> chunks;    // OpenStream(): the body, chunk by chunk
  std::optional<Error> stream_error;  // after the chunks, Next() fails with this
  // After the chunks, Next() waits until the stream is destroyed or the request's cancellation
  // fires (then it fails with kCancelled).
  bool stream_hangs = false;

  static ScriptedReply Json(std::string body, long status = 200) {
    ScriptedReply reply;
    reply.status = status;
    reply.body = std::move(body);
    return reply;
  }
  static ScriptedReply Failure(ErrorKind kind, std::string message) {
    ScriptedReply reply;
    reply.error = MakeError(kind, std::move(message));
    return reply;
  }
  static ScriptedReply Events(std::vector<std::string> chunks, long status = 200) {
    ScriptedReply reply;
    reply.status = status;
    reply.content_type = "text/event-stream";
    reply.chunks = std::move(chunks);
    return reply;
  }
};

// An upstream::Client that answers from a script, records what it was sent, and counts streams
// that were destroyed before their body ended (a cancelled transfer). Use it from one io_context.
class ScriptedUpstream final : public upstream::Client {
 public:
  void Push(ScriptedReply reply) { replies_.push_back(std::move(reply)); }

  const std::vector<upstream::Request>& requests() const { return requests_; }
  std::size_t cancelled_streams() const { return *cancelled_; }
  std::size_t finished_streams() const { return *finished_; }

  net::awaitable<Result<upstream::Response>> Send(upstream::Request request) override {
    auto reply = Next(std::move(request));
    if (reply.error) co_return *reply.error;
    upstream::Response response;
    response.status = reply.status;
    response.content_type = reply.content_type;
    response.headers = reply.headers;
    response.body = reply.body;
    co_return response;
  }

  net::awaitable<Result<std::unique_ptr<upstream::Stream>>> OpenStream(
      upstream::Request request) override {
    auto cancellation = request.cancellation;
    auto reply = Next(std::move(request));
    if (reply.error) co_return *reply.error;
    std::unique_ptr<upstream::Stream> stream(
        new ScriptedStream(std::move(reply), cancelled_, finished_, std::move(cancellation)));
    co_return stream;
  }

 private:
  class ScriptedStream final : public upstream::Stream {
   public:
    ScriptedStream(ScriptedReply reply, std::shared_ptr<std::size_t> cancelled,
                   std::shared_ptr<std::size_t> finished,
                   std::shared_ptr<upstream::Cancellation> cancellation)
        : reply_(std::move(reply)),
          cancelled_(std::move(cancelled)),
          finished_(std::move(finished)),
          cancellation_(std::move(cancellation)) {}
    ~ScriptedStream() override {
      if (ended_) {
        ++*finished_;
      } else {
        ++*cancelled_;
      }
    }
    long status() const override { return reply_.status; }
    const std::string& content_type() const override { return reply_.content_type; }
    const upstream::Headers& headers() const override { return reply_.headers; }
    net::awaitable<Result<std::optional<std::string>>> Next() override {
      if (next_ < reply_.chunks.size()) {
        std::optional<std::string> chunk = reply_.chunks[next_++];
        co_return chunk;
      }
      if (reply_.stream_error) co_return *reply_.stream_error;
      if (reply_.stream_hangs) {
        auto forever = std::make_shared<net::steady_timer>(co_await net::this_coro::executor);
        forever->expires_at(net::steady_timer::time_point::max());
        if (cancellation_) {
          cancellation_->OnCancel([weak = std::weak_ptr<net::steady_timer>(forever)] {
            if (auto timer = weak.lock()) timer->cancel();
          });
        }
        boost::system::error_code ec;
        co_await forever->async_wait(net::redirect_error(net::use_awaitable, ec));
        co_return MakeError(ErrorKind::kCancelled, "stream cancelled");
      }
      ended_ = true;
      co_return std::optional<std::string>();
    }

   private:
    ScriptedReply reply_;
    std::shared_ptr<std::size_t> cancelled_;
    std::shared_ptr<std::size_t> finished_;
    std::shared_ptr<upstream::Cancellation> cancellation_;
    std::size_t next_ = 0;
    bool ended_ = false;
  };

  ScriptedReply Next(upstream::Request request) {
    requests_.push_back(std::move(request));
    if (replies_.empty()) {
      return ScriptedReply::Failure(ErrorKind::kInternal, "no scripted upstream reply left");
    }
    ScriptedReply reply = std::move(replies_.front());
    replies_.pop_front();
    return reply;
  }

  std::deque<ScriptedReply> replies_;
  std::vector<upstream::Request> requests_;
  std::shared_ptr<std::size_t> cancelled_ = std::make_shared<std::size_t>(0);
  std::shared_ptr<std::size_t> finished_ = std::make_shared<std::size_t>(0);
};

}  // namespace staple::testing
