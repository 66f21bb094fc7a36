#pragma once

#include <chrono>
#include <memory>

#include "upstream/client.h"

// `staple serve --demo`: an upstream built into the binary, so that Staple can be tried with no
// key and no network (the curl examples, the SDKs, the playground). It answers like
// tools/fake_openai, whose request logic it shares: a chat answer is "echo(N): <the last user
// message>" (N messages in the request), streamed in a few chunks when asked; GET /models,
// /models/{id} and POST /embeddings answer too; any other path is a 404 in OpenAI's shape.
// Fault markers are not honoured here.
namespace staple::app {

class DemoUpstream final : public upstream::Client {
 public:
  // `chunk_interval`: the pause before each streamed event after the first, so a stream looks
  // like one.
  explicit DemoUpstream(std::chrono::milliseconds chunk_interval = std::chrono::milliseconds(40))
      : chunk_interval_(chunk_interval) {}

  net::awaitable<Result<upstream::Response>> Send(upstream::Request request) override;
  net::awaitable<Result<std::unique_ptr<upstream::Stream>>> OpenStream(
      upstream::Request request) override;

 private:
  std::chrono::milliseconds chunk_interval_;
};

}  // namespace staple::app
