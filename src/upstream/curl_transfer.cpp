#include "upstream/curl_transfer.h"

#include <algorithm>
#include <charconv>
#include <string>
#include <utility>
#include <vector>

#include "observe/metrics.h"
#include "upstream/curl_multi.h"

namespace staple::upstream {
namespace {

constexpr long kReceiveBufferBytes = 4096;

// Easy handles of finished transfers, kept for the next transfers of the same thread. A new handle
// costs the allocation and initialisation of libcurl's whole transfer state, and its first
// transfer allocates a receive buffer; curl_easy_reset keeps both. Connections are not kept here:
// they live in the CurlMulti's pool.
class EasyHandlePool {
 public:
  // Idle handles kept per thread; more are cleaned up.
  static constexpr std::size_t kMaxIdle = 256;

  EasyHandlePool() = default;
  EasyHandlePool(const EasyHandlePool&) = delete;
  EasyHandlePool& operator=(const EasyHandlePool&) = delete;
  ~EasyHandlePool() {
    for (CURL* easy : idle_) curl_easy_cleanup(easy);
  }

  // A handle with every option at its default, or nullptr when libcurl cannot make one.
  CURL* Take() {
    if (idle_.empty()) return curl_easy_init();
    CURL* easy = idle_.back();
    idle_.pop_back();
    return easy;
  }

  // Takes back a handle that is in no multi handle.
  void Give(CURL* easy) {
    if (idle_.size() >= kMaxIdle) {
      curl_easy_cleanup(easy);
      return;
    }
    curl_easy_reset(easy);
    idle_.push_back(easy);
  }

 private:
  std::vector<CURL*> idle_;
};

// Transfers are created and destroyed on their io_context's thread.
thread_local EasyHandlePool t_easy_handles;

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r' ||
                           text.back() == '\n')) {
    text.remove_suffix(1);
  }
  return text;
}

// Maps a libcurl failure to our error kinds; the bool says whether another attempt may succeed,
// which is only the case when the server cannot have started answering.
std::pair<ErrorKind, bool> Classify(CURLcode code, bool first_byte) {
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return {ErrorKind::kTimeout, !first_byte};
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return {ErrorKind::kUnavailable, !first_byte};
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_HTTP_RETURNED_ERROR:
      return {ErrorKind::kUpstream, false};
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_OUT_OF_MEMORY:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_FAILED_INIT:
      return {ErrorKind::kInternal, false};
    default:
      // Certificate problems, resets mid-body, partial bodies: the upstream cannot be used now,
      // and trying again would not help (or could repeat a completed exchange).
      return {ErrorKind::kUnavailable, false};
  }
}

}  // namespace

Result<std::shared_ptr<CurlTransfer>> CurlTransfer::Create(net::any_io_executor executor,
                                                           const Settings& settings,
                                                           Request request,
                                                           const Options& options) {
  std::shared_ptr<CurlTransfer> transfer(
      new CurlTransfer(std::move(executor), options, settings.api_key));
  if (Status configured = transfer->Configure(settings, std::move(request)); !configured) {
    return configured.error();
  }
  return transfer;
}

CurlTransfer::CurlTransfer(net::any_io_executor executor, const Options& options,
                           std::string redact)
    : options_(options),
      redact_(std::move(redact)),
      last_activity_(Clock::now()),
      wake_(std::move(executor)) {}

CurlTransfer::~CurlTransfer() {
  // CurlMulti holds a reference while libcurl runs the transfer, so the handle is not in a multi
  // handle any more here.
  // A handle whose transfer libcurl itself failed may keep state curl_easy_reset does not clear:
  // after a malformed URL, libcurl 7.88 refuses every later CURLOPT_BUFFERSIZE on that handle
  // (CURLE_BAD_FUNCTION_ARGUMENT; it seems to keep the receive buffer it allocated), so each
  // transfer of the thread that took it from the pool would fail.
  if (easy_ != nullptr && !libcurl_failed_) {
    t_easy_handles.Give(easy_);
  } else if (easy_ != nullptr) {
    curl_easy_cleanup(easy_);
  }
  curl_slist_free_all(request_headers_);
}

Status CurlTransfer::Configure(const Settings& settings, Request request) {
  auto fields = RequestHeaders(settings, request, options_.mode == Mode::kStream);
  if (!fields) return fields.error();
  std::vector<std::string> lines;
  lines.reserve(fields->size() + 1);
  for (const auto& [name, value] : *fields) {
    // "Name;" is libcurl's spelling of a header with an empty value.
    lines.push_back(value.empty() ? name + ";" : name + ": " + value);
  }
  lines.emplace_back("Expect:");  // no "100-continue" round trip before the body
  for (const auto& line : lines) {
    curl_slist* appended = curl_slist_append(request_headers_, line.c_str());
    if (appended == nullptr) return MakeError(ErrorKind::kInternal, "out of memory");
    request_headers_ = appended;
  }

  easy_ = t_easy_handles.Take();
  if (easy_ == nullptr) return MakeError(ErrorKind::kInternal, "curl_easy_init failed");
  url_ = settings.base_url + request.path;
  request_body_ = std::move(request.body);

  bool ok = true;
  auto check = [&ok](CURLcode code) { ok = ok && code == CURLE_OK; };
  check(curl_easy_setopt(easy_, CURLOPT_URL, url_.c_str()));
  check(curl_easy_setopt(easy_, CURLOPT_PROTOCOLS_STR, "http,https"));
  check(curl_easy_setopt(easy_, CURLOPT_NOSIGNAL, 1L));
  check(curl_easy_setopt(easy_, CURLOPT_ERRORBUFFER, error_text_));
  check(curl_easy_setopt(easy_, CURLOPT_PRIVATE, this));
  check(curl_easy_setopt(easy_, CURLOPT_HTTPHEADER, request_headers_));
  check(curl_easy_setopt(easy_, CURLOPT_HEADERFUNCTION, &CurlTransfer::HeaderCallback));
  check(curl_easy_setopt(easy_, CURLOPT_HEADERDATA, this));
  check(curl_easy_setopt(easy_, CURLOPT_WRITEFUNCTION, &CurlTransfer::WriteCallback));
  check(curl_easy_setopt(easy_, CURLOPT_WRITEDATA, this));
  check(curl_easy_setopt(easy_, CURLOPT_PREREQFUNCTION, &CurlTransfer::PrereqCallback));
  check(curl_easy_setopt(easy_, CURLOPT_PREREQDATA, this));

  if (request.method == "GET") {
    check(curl_easy_setopt(easy_, CURLOPT_HTTPGET, 1L));
  } else if (request.method == "HEAD") {
    check(curl_easy_setopt(easy_, CURLOPT_NOBODY, 1L));
  } else {
    if (request.method != "POST") {
      check(curl_easy_setopt(easy_, CURLOPT_CUSTOMREQUEST, request.method.c_str()));
    }
    check(curl_easy_setopt(easy_, CURLOPT_POSTFIELDSIZE_LARGE,
                           static_cast<curl_off_t>(request_body_.size())));
    check(curl_easy_setopt(easy_, CURLOPT_POSTFIELDS, request_body_.data()));
  }

  // Deadlines: libcurl's for connecting (and, for whole responses, the exchange); the first-byte
  // and idle deadlines are ours (CurlClient), since libcurl's low-speed limit is too coarse.
  check(curl_easy_setopt(easy_, CURLOPT_CONNECTTIMEOUT_MS,
                         static_cast<long>(std::max<long>(1, settings.connect_timeout.count()))));
  if (options_.curl_timeout.count() > 0) {
    check(curl_easy_setopt(easy_, CURLOPT_TIMEOUT_MS,
                           static_cast<long>(options_.curl_timeout.count())));
  }
  if (options_.mode == Mode::kCollect) {
    check(curl_easy_setopt(easy_, CURLOPT_MAXFILESIZE_LARGE,
                           static_cast<curl_off_t>(options_.body_limit)));
  }

  // Connections: no Nagle delay, TCP keepalive on pooled connections. TLS verification and the
  // proxy environment variables keep libcurl's defaults (verify; honour HTTPS_PROXY/NO_PROXY).
  check(curl_easy_setopt(easy_, CURLOPT_TCP_NODELAY, 1L));
  check(curl_easy_setopt(easy_, CURLOPT_TCP_KEEPALIVE, 1L));
  check(curl_easy_setopt(easy_, CURLOPT_TCP_KEEPIDLE, 30L));
  check(curl_easy_setopt(easy_, CURLOPT_TCP_KEEPINTVL, 15L));
  // Over TLS, a new request waits for the connection being set up to tell (by ALPN, at the end of
  // the handshake) whether it can multiplex HTTP/2, instead of opening another one. Over plain
  // HTTP libcurl only learns that from the first response, which for a model can take seconds:
  // concurrent requests would queue behind it, so they open their own connections instead.
  if (EqualsIgnoreCase(std::string_view(url_).substr(0, 8), "https://")) {
    check(curl_easy_setopt(easy_, CURLOPT_PIPEWAIT, 1L));
  }
  check(curl_easy_setopt(easy_, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L));
  // libcurl's receive buffer is the largest allocation of a transfer in flight (16 KiB by
  // default); one page is what answers and stream events need, as for nginx's proxy_buffer_size.
  // At 5 000 upstream calls in flight this is ~60 MiB less resident memory (bench/RESULTS.md); a
  // pooled handle keeps its buffer, so this costs no allocation per transfer.
  check(curl_easy_setopt(easy_, CURLOPT_BUFFERSIZE, kReceiveBufferBytes));
  if (!ok) return MakeError(ErrorKind::kInternal, "libcurl rejected an upstream request option");
  return Ok();
}

std::size_t CurlTransfer::HeaderCallback(char* data, std::size_t size, std::size_t count,
                                         void* self) {
  return static_cast<CurlTransfer*>(self)->OnHeader(std::string_view(data, size * count));
}

std::size_t CurlTransfer::WriteCallback(char* data, std::size_t size, std::size_t count,
                                        void* self) {
  return static_cast<CurlTransfer*>(self)->OnBody(data, size * count);
}

int CurlTransfer::PrereqCallback(void* self, char*, char*, int, int) {
  auto* transfer = static_cast<CurlTransfer*>(self);
  // The connection is ready and the request goes out now: the first-byte deadline starts here.
  transfer->request_sent_at_ = Clock::now();
  transfer->Wake();
  return CURL_PREREQFUNC_OK;
}

std::size_t CurlTransfer::OnHeader(std::string_view raw) {
  first_byte_ = true;
  last_activity_ = Clock::now();
  if (headers_complete_) return raw.size();  // trailers of a chunked body
  std::string_view line = Trim(raw);
  if (line.empty()) {
    // End of a header block. A 1xx block is followed by another; the final one has status >= 200.
    if (status_ >= 200) {
      headers_complete_ = true;
      Wake();
    }
    return raw.size();
  }
  if (line.substr(0, 5) == "HTTP/") {
    // A status line starts a new header block ("HTTP/1.1 200 OK", "HTTP/2 200").
    headers_.clear();
    content_type_.clear();
    status_ = 0;
    if (auto space = line.find(' '); space != std::string_view::npos) {
      std::string_view code = line.substr(space + 1, 3);
      long value = 0;
      const auto [end, ec] = std::from_chars(code.data(), code.data() + code.size(), value);
      if (ec == std::errc() && end == code.data() + code.size()) status_ = value;
    }
    return raw.size();
  }
  if ((raw.front() == ' ' || raw.front() == '\t') && !headers_.empty()) {
    headers_.back().second += ' ';  // obsolete line folding
    headers_.back().second += line;
    return raw.size();
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return raw.size();
  std::string name = ToLowerAscii(Trim(line.substr(0, colon)));
  std::string value(Trim(line.substr(colon + 1)));
  if (name == "content-type") content_type_ = value;
  headers_.emplace_back(std::move(name), std::move(value));
  return raw.size();
}

std::size_t CurlTransfer::OnBody(const char* data, std::size_t size) {
  first_byte_ = true;
  if (options_.mode == Mode::kCollect) {
    if (body_.size() + size > options_.body_limit) {
      failure_ =
          MakeError(ErrorKind::kUpstream, "upstream response body exceeds " +
                                              std::to_string(options_.body_limit) + " bytes");
      return 0;  // CURLE_WRITE_ERROR ends the transfer; OnDone keeps this failure
    }
    body_.append(data, size);
    return size;
  }
  // Streaming: keep at most about body_limit bytes. libcurl keeps a refused chunk and delivers it
  // again after curl_easy_pause(CURLPAUSE_CONT), and reads nothing more from the socket meanwhile,
  // so a slow reader holds back the upstream through TCP flow control.
  if (!body_.empty() && body_.size() + size > options_.body_limit) {
    paused_ = true;
    return CURL_WRITEFUNC_PAUSE;
  }
  body_.append(data, size);
  last_activity_ = Clock::now();
  Wake();
  return size;
}

std::string CurlTransfer::TakeBuffered() {
  std::string out = std::move(body_);
  body_.clear();
  if (paused_ && multi_ != nullptr) {
    paused_ = false;
    last_activity_ = Clock::now();
    if (curl_easy_pause(easy_, CURLPAUSE_CONT) != CURLE_OK) {
      Cancel(MakeError(ErrorKind::kInternal, "could not resume the upstream transfer"), false);
    }
  }
  return out;
}

void CurlTransfer::Cancel(Error why, bool retryable) {
  if (finished_) return;
  if (multi_ != nullptr) multi_->Stop(*this);
  multi_ = nullptr;
  Finish(std::move(why), retryable);
}

net::awaitable<void> CurlTransfer::WaitUntil(Clock::time_point deadline) {
  wake_.expires_at(deadline);
  waiting_ = true;
  boost::system::error_code ignored;  // expiry and cancellation both mean: look again
  co_await wake_.async_wait(net::redirect_error(net::use_awaitable, ignored));
  waiting_ = false;
}

void CurlTransfer::OnStarted(CurlMulti* multi) { multi_ = multi; }

void CurlTransfer::OnDone(CURLcode code) {
  multi_ = nullptr;
  if (finished_) return;
  libcurl_failed_ = libcurl_failed_ || code != CURLE_OK;
  if (code != CURLE_OK && !failure_) {
    const auto [kind, retryable] = Classify(code, first_byte_);
    std::string detail =
        error_text_[0] != '\0' ? std::string(error_text_) : std::string(curl_easy_strerror(code));
    failure_ = MakeError(kind, Redact("upstream request failed: " + detail, redact_));
    retryable_ = retryable;
  }
  finished_ = true;
  Wake();
}

void CurlTransfer::OnAbandoned() {
  multi_ = nullptr;
  if (finished_) return;
  finished_ = true;
  failure_ = MakeError(ErrorKind::kCancelled, "the I/O context of the upstream request stopped");
}

void CurlTransfer::Finish(Error failure, bool retryable) {
  finished_ = true;
  failure.message = Redact(std::move(failure.message), redact_);
  failure_ = std::move(failure);
  retryable_ = retryable;
  Wake();
}

void CurlTransfer::Wake() {
  if (waiting_) wake_.cancel();
}

}  // namespace staple::upstream
