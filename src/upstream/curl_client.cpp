#include "upstream/curl_client.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "upstream/call_registry.h"
#include "upstream/curl_multi.h"
#include "upstream/curl_transfer.h"
#include "upstream/retry.h"

namespace staple::upstream {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

class CurlCall;

// What the coroutines of one client share; it outlives the CurlClient while they run.
struct CurlClientState {
  explicit CurlClientState(Settings s) : settings(std::move(s)) {}

  const Settings settings;
  CallRegistry calls;
};

namespace {

std::string Ms(milliseconds duration) { return std::to_string(duration.count()) + " ms"; }

}  // namespace

// One Send() or stream in flight, registered with its client so that Shutdown() can reach it
// from any thread. Used on its io_context's thread; Shutdown() posts Cancel() there.
class CurlCall final : public CancellableCall {
 public:
  static std::shared_ptr<CurlCall> Begin(std::shared_ptr<CurlClientState> state,
                                         net::any_io_executor executor) {
    std::shared_ptr<CurlCall> call(new CurlCall(state, executor));
    if (!state->calls.Add(call, std::move(executor))) call->cancelled_ = true;
    return call;
  }

  ~CurlCall() override { state_->calls.Remove(this); }
  CurlCall(const CurlCall&) = delete;
  CurlCall& operator=(const CurlCall&) = delete;

  bool cancelled() const { return cancelled_; }
  void Track(const std::shared_ptr<CurlTransfer>& transfer) { transfer_ = transfer; }

  void Cancel() override {
    cancelled_ = true;
    if (auto transfer = transfer_.lock()) transfer->Cancel(ShutDownError(), false);
    timer_.cancel();
  }

  // Waits before the next attempt; Cancel() cuts it short.
  net::awaitable<void> Sleep(milliseconds delay) {
    timer_.expires_after(delay);
    boost::system::error_code ignored;
    co_await timer_.async_wait(net::redirect_error(net::use_awaitable, ignored));
  }

 private:
  CurlCall(std::shared_ptr<CurlClientState> state, net::any_io_executor executor)
      : state_(std::move(state)), timer_(std::move(executor)) {}

  std::shared_ptr<CurlClientState> state_;
  net::steady_timer timer_;
  std::weak_ptr<CurlTransfer> transfer_;
  bool cancelled_ = false;
};

namespace {

struct Limits {
  milliseconds connect;
  milliseconds first_byte;
  milliseconds idle;
  // Request::answer_at_once: no first-byte deadline once the request is sent.
  bool answer_at_once = false;
};

Limits LimitsOf(const Settings& settings) {
  return Limits{settings.connect_timeout, settings.first_byte_timeout, settings.idle_timeout};
}

enum class Goal { kHeaders, kComplete };

// Waits until the transfer finished or, for kHeaders, its final response headers arrived. Before
// the first response byte the first-byte deadline applies (for an answer_at_once request only
// until the request is sent); for kHeaders after it, the idle
// deadline; `total`, when given, caps both. A missed deadline cancels the transfer with kTimeout.
net::awaitable<void> AwaitTransfer(std::shared_ptr<CurlTransfer> transfer, Limits limits, Goal goal,
                                   Clock::time_point started,
                                   std::optional<Clock::time_point> total) {
  for (;;) {
    if (transfer->finished()) co_return;
    if (goal == Goal::kHeaders && transfer->headers_complete()) co_return;
    auto deadline = Clock::time_point::max();
    std::string why;
    bool retryable = false;
    if (!transfer->first_byte()) {
      if (auto sent = transfer->request_sent_at()) {
        // The upstream has the request and may be at work on it: another attempt could be paid
        // twice, so a silence past the first-byte deadline ends the exchange.
        if (!limits.answer_at_once) {
          deadline = *sent + limits.first_byte;
          why = "upstream sent no response within " + Ms(limits.first_byte);
        }
      } else {
        // Resolving, connecting, TLS, or waiting for a connection that can multiplex.
        retryable = true;
        deadline = started + limits.connect + limits.first_byte;
        why = "upstream connection not ready within " + Ms(limits.connect + limits.first_byte);
      }
    } else if (goal == Goal::kHeaders) {
      deadline = transfer->last_activity() + limits.idle;
      why = "upstream response headers stalled for " + Ms(limits.idle);
    }
    if (total && *total < deadline) {
      deadline = *total;
      why = "upstream exchange exceeded the total timeout";
      retryable = false;  // no time left for another attempt anyway
    }
    if (Clock::now() >= deadline) {
      transfer->Cancel(MakeError(ErrorKind::kTimeout, why), retryable);
      co_return;
    }
    co_await transfer->WaitUntil(deadline);
  }
}

// The wait before attempt `attempt + 1`, or std::nullopt when this attempt's outcome stands.
// `by_status`: judge the HTTP status (headers arrived) rather than the failure.
std::optional<milliseconds> RetryWait(const CurlTransfer& transfer, const Settings& settings,
                                      int attempt, bool enabled, bool by_status) {
  if (!enabled || attempt > settings.max_retries) return std::nullopt;
  if (!by_status) {
    if (!transfer.failure() || !transfer.retryable()) return std::nullopt;
    return RetryDelay(settings, attempt, std::nullopt, UniformSample());
  }
  if (!IsRetryableStatus(transfer.status())) return std::nullopt;
  return RetryDelay(settings, attempt, RetryAfter(transfer.headers()), UniformSample());
}

class CurlStream final : public Stream {
 public:
  // `ends_at`: the stream's own total deadline (Settings::stream_timeout from the request).
  CurlStream(std::shared_ptr<CurlCall> call, std::shared_ptr<CurlTransfer> transfer,
             milliseconds idle, Clock::time_point ends_at, milliseconds total)
      : call_(std::move(call)),
        transfer_(std::move(transfer)),
        idle_(idle),
        ends_at_(ends_at),
        total_(total) {}

  // Stops a transfer still running: libcurl closes its connection (HTTP/1.1) or resets the stream
  // (HTTP/2). Runs outside libcurl callbacks, which never resume coroutines inline.
  ~CurlStream() override {
    transfer_->Cancel(MakeError(ErrorKind::kCancelled, "the upstream stream was closed"), false);
  }

  long status() const override { return transfer_->status(); }
  const std::string& content_type() const override { return transfer_->content_type(); }
  const Headers& headers() const override { return transfer_->headers(); }

  net::awaitable<Result<std::optional<std::string>>> Next() override {
    std::shared_ptr<CurlTransfer> transfer = transfer_;
    for (;;) {
      if (!transfer->body().empty()) {
        co_return std::optional<std::string>(transfer->TakeBuffered());
      }
      if (transfer->finished()) {
        if (transfer->failure()) co_return *transfer->failure();
        co_return std::optional<std::string>();
      }
      const auto idle_deadline = transfer->last_activity() + idle_;
      const auto deadline = std::min(idle_deadline, ends_at_);
      if (Clock::now() >= deadline) {
        std::string why = deadline == ends_at_
                              ? "upstream stream exceeded the stream timeout of " + Ms(total_)
                              : "upstream stream idle for more than " + Ms(idle_);
        transfer->Cancel(MakeError(ErrorKind::kTimeout, std::move(why)), false);
        continue;
      }
      co_await transfer->WaitUntil(deadline);
    }
  }

 private:
  std::shared_ptr<CurlCall> call_;  // keeps the stream reachable by Shutdown()
  std::shared_ptr<CurlTransfer> transfer_;
  milliseconds idle_;
  Clock::time_point ends_at_;
  milliseconds total_;
};

// The coroutines take the client state by value: they never touch the CurlClient, which may be
// destroyed while they run.
net::awaitable<Result<Response>> SendWith(std::shared_ptr<CurlClientState> state, Request request) {
  const auto started = Clock::now();
  const Settings& settings = state->settings;
  const auto executor = co_await net::this_coro::executor;
  CurlMulti& multi = CurlMulti::Of(executor);
  auto call = CurlCall::Begin(state, multi.executor());
  if (request.cancellation) {
    request.cancellation->OnCancel([weak = std::weak_ptr<CurlCall>(call)] {
      if (auto alive = weak.lock()) alive->Cancel();
    });
  }
  auto total = started + settings.total_timeout;
  if (request.deadline && *request.deadline < total) total = *request.deadline;

  for (int attempt = 1;; ++attempt) {
    if (call->cancelled()) co_return ShutDownError();
    const auto left = std::chrono::ceil<milliseconds>(total - Clock::now());
    if (left.count() <= 0) {
      co_return MakeError(ErrorKind::kTimeout, "upstream exchange exceeded the total timeout");
    }
    CurlTransfer::Options options;
    options.mode = CurlTransfer::Mode::kCollect;
    options.body_limit = settings.max_response_bytes;
    options.curl_timeout = left;
    auto created = CurlTransfer::Create(multi.executor(), settings, request, options);
    if (!created) co_return created.error();
    std::shared_ptr<CurlTransfer> transfer = std::move(created).value();
    call->Track(transfer);
    if (Status begun = multi.Start(transfer); !begun) co_return begun.error();

    // Named arguments only: g++ 12 mishandles temporaries in a co_await call (docs/STYLE.md).
    Limits limits = LimitsOf(settings);
    limits.answer_at_once = request.answer_at_once;
    const auto attempt_started = Clock::now();
    co_await AwaitTransfer(transfer, limits, Goal::kComplete, attempt_started, total);

    const bool by_status = !transfer->failure();
    if (auto wait = RetryWait(*transfer, settings, attempt, request.retry, by_status)) {
      if (Clock::now() + *wait < total && !call->cancelled()) {
        co_await call->Sleep(*wait);
        continue;
      }
    }
    if (transfer->failure()) co_return *transfer->failure();
    Response response;
    response.status = transfer->status();
    response.content_type = transfer->content_type();
    response.headers = std::move(transfer->headers());
    response.body = std::move(transfer->body());
    response.attempts = attempt;
    response.elapsed = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
    co_return response;
  }
}

net::awaitable<Result<std::unique_ptr<Stream>>> OpenStreamWith(
    std::shared_ptr<CurlClientState> state, Request request) {
  const Settings& settings = state->settings;
  const auto executor = co_await net::this_coro::executor;
  CurlMulti& multi = CurlMulti::Of(executor);
  auto call = CurlCall::Begin(state, multi.executor());
  if (request.cancellation) {
    request.cancellation->OnCancel([weak = std::weak_ptr<CurlCall>(call)] {
      if (auto alive = weak.lock()) alive->Cancel();
    });
  }
  const auto started = Clock::now();
  // Opening (every attempt until the response headers) is bounded like a whole non-streaming
  // exchange; the stream as a whole by its own, longer deadline.
  std::optional<Clock::time_point> total = started + settings.total_timeout;
  if (request.deadline && *request.deadline < *total) total = *request.deadline;
  const auto ends_at = started + settings.stream_timeout;

  for (int attempt = 1;; ++attempt) {
    if (call->cancelled()) co_return ShutDownError();
    if (Clock::now() >= *total) {
      co_return MakeError(ErrorKind::kTimeout, "upstream exchange exceeded the total timeout");
    }
    CurlTransfer::Options options;
    options.mode = CurlTransfer::Mode::kStream;
    options.body_limit = settings.stream_buffer_bytes;
    auto created = CurlTransfer::Create(multi.executor(), settings, request, options);
    if (!created) co_return created.error();
    std::shared_ptr<CurlTransfer> transfer = std::move(created).value();
    call->Track(transfer);
    if (Status begun = multi.Start(transfer); !begun) co_return begun.error();

    const Limits limits = LimitsOf(settings);
    const auto attempt_started = Clock::now();
    co_await AwaitTransfer(transfer, limits, Goal::kHeaders, attempt_started, total);

    // Retries happen only here, before any body byte was handed out.
    const bool by_status = transfer->headers_complete();
    if (auto wait = RetryWait(*transfer, settings, attempt, request.retry, by_status)) {
      if (Clock::now() + *wait < *total && !call->cancelled()) {
        transfer->Cancel(MakeError(ErrorKind::kCancelled, "superseded by a retry"), false);
        co_await call->Sleep(*wait);
        continue;
      }
    }
    if (!transfer->headers_complete()) {
      if (transfer->failure()) co_return *transfer->failure();
      co_return MakeError(ErrorKind::kUpstream, "upstream sent no HTTP response");
    }
    std::unique_ptr<Stream> stream =
        std::make_unique<CurlStream>(std::move(call), std::move(transfer), settings.idle_timeout,
                                     ends_at, settings.stream_timeout);
    co_return stream;
  }
}

}  // namespace

CurlClient::CurlClient(Settings settings)
    : state_(std::make_shared<CurlClientState>(std::move(settings))) {
  CurlMulti::GlobalInit();
}

CurlClient::~CurlClient() { Shutdown(); }

net::awaitable<Result<Response>> CurlClient::Send(Request request) {
  return SendWith(state_, std::move(request));
}

net::awaitable<Result<std::unique_ptr<Stream>>> CurlClient::OpenStream(Request request) {
  return OpenStreamWith(state_, std::move(request));
}

void CurlClient::Shutdown() { state_->calls.ShutDown(); }

}  // namespace staple::upstream
