#include "ratelimit/redis/redis_connection.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <utility>

namespace staple::ratelimit {

namespace {

Error Unavailable(std::string message) {
  return MakeError(ErrorKind::kUnavailable, std::move(message));
}

RedisReply Copy(const redisReply& reply) {
  RedisReply out;
  switch (reply.type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = reply.integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(reply.elements);
      for (std::size_t i = 0; i < reply.elements; ++i)
        out.elements.push_back(Copy(*reply.element[i]));
      break;
    default:
      out.type = RedisReply::Type::kNil;
      break;
  }
  if (reply.str != nullptr) out.str.assign(reply.str, reply.len);
  return out;
}

}  // namespace

// One command in flight: completed once, by its reply, by the loss of the connection, or by its
// deadline, whichever comes first.
struct RedisConnection::Pending {
  Pending(net::io_context& io, Callback callback) : timer(io), done(std::move(callback)) {}

  void Finish(Result<RedisReply> result) {
    finished = true;
    Callback callback = std::move(done);
    callback(std::move(result));
  }

  net::steady_timer timer;
  Callback done;
  bool finished = false;
};

// The adapter between hiredis' event hooks and Asio: hiredis says when it wants to read or
// write, and a wait on the socket calls it back when it can. The socket belongs to hiredis: it is
// released (not closed) when hiredis cleans up.
struct RedisConnection::Watcher : std::enable_shared_from_this<Watcher> {
  Watcher(net::io_context& io, redisAsyncContext* c, RedisConnection* o)
      : socket(io), context(c), owner(o) {
    boost::system::error_code ignored;
    socket.assign(c->c.fd, ignored);
  }

  void ArmRead() {
    if (!alive || !want_read || read_waiting) return;
    read_waiting = true;
    socket.async_wait(net::posix::stream_descriptor::wait_read,
                      [self = shared_from_this()](boost::system::error_code ec) {
                        self->read_waiting = false;
                        if (ec || !self->alive || !self->want_read) return;
                        // May free the context (connection lost): `alive` tells.
                        redisAsyncHandleRead(self->context);
                        self->ArmRead();
                      });
  }

  void ArmWrite() {
    if (!alive || !want_write || write_waiting) return;
    write_waiting = true;
    socket.async_wait(net::posix::stream_descriptor::wait_write,
                      [self = shared_from_this()](boost::system::error_code ec) {
                        self->write_waiting = false;
                        if (ec || !self->alive || !self->want_write) return;
                        // Completes the connect on the first call; may free the context.
                        redisAsyncHandleWrite(self->context);
                        self->ArmWrite();
                      });
  }

  static void AddRead(void* data) {
    auto* w = static_cast<Watcher*>(data);
    w->want_read = true;
    w->ArmRead();
  }
  static void DelRead(void* data) { static_cast<Watcher*>(data)->want_read = false; }
  static void AddWrite(void* data) {
    auto* w = static_cast<Watcher*>(data);
    w->want_write = true;
    w->ArmWrite();
  }
  static void DelWrite(void* data) { static_cast<Watcher*>(data)->want_write = false; }
  static void Cleanup(void* data) {
    auto* w = static_cast<Watcher*>(data);
    w->alive = false;
    boost::system::error_code ignored;
    w->socket.cancel(ignored);
    w->socket.release();
    // Last: this may drop the owner's reference to the watcher.
    w->owner->OnContextGone();
  }

  net::posix::stream_descriptor socket;
  redisAsyncContext* context;
  RedisConnection* owner;
  bool alive = true;
  bool want_read = false;
  bool want_write = false;
  bool read_waiting = false;
  bool write_waiting = false;
};

RedisConnection::RedisConnection(net::io_context& io, RedisConnectionSettings settings)
    : io_(io), settings_(std::move(settings)), backoff_(settings_.backoff_initial) {}

RedisConnection::~RedisConnection() {
  closing_ = true;
  Drop();
}

void RedisConnection::Execute(std::vector<std::string> argv, Callback done) {
  if (context_ == nullptr) {
    if (std::chrono::steady_clock::now() < next_attempt_) {
      done(Unavailable("rate limit storage unavailable (reconnecting)"));
      return;
    }
    Connect();
    if (context_ == nullptr) {
      done(Unavailable("rate limit storage unavailable (cannot connect)"));
      return;
    }
  }
  auto pending = std::make_shared<Pending>(io_, std::move(done));
  if (!Send(argv, pending)) {
    pending->Finish(Unavailable("rate limit storage unavailable (connection closing)"));
    return;
  }
  // hiredis 0.14 has no timeouts of its own: the deadline is this timer. A stalled server is
  // treated like a lost one, so the connection is dropped and the next call reconnects.
  pending->timer.expires_after(settings_.timeout);
  pending->timer.async_wait([this, pending](boost::system::error_code ec) {
    if (ec || pending->finished) return;
    pending->Finish(Unavailable("rate limit storage timed out"));
    Drop();
  });
}

void RedisConnection::Connect() {
  redisAsyncContext* context = redisAsyncConnect(settings_.host.c_str(), settings_.port);
  if (context == nullptr || context->err != 0) {
    if (context != nullptr) redisAsyncFree(context);
    next_attempt_ = std::chrono::steady_clock::now() + backoff_;
    backoff_ = std::min(backoff_ * 2, settings_.backoff_max);
    return;
  }
  context->data = this;
  watcher_ = std::make_shared<Watcher>(io_, context, this);
  context->ev.data = watcher_.get();
  context->ev.addRead = &Watcher::AddRead;
  context->ev.delRead = &Watcher::DelRead;
  context->ev.addWrite = &Watcher::AddWrite;
  context->ev.delWrite = &Watcher::DelWrite;
  context->ev.cleanup = &Watcher::Cleanup;
  redisAsyncSetConnectCallback(context, &RedisConnection::OnConnect);
  context_ = context;
  // The non-blocking connect completes when the socket becomes writable.
  Watcher::AddWrite(watcher_.get());
  setup_error_.clear();
  // AUTH and SELECT are pipelined ahead of every other command on this connection; when either
  // fails the connection is dropped, and the commands behind them fail with it.
  std::vector<std::vector<std::string>> preamble;
  if (!settings_.password.empty()) {
    if (settings_.username.empty()) {
      preamble.push_back({"AUTH", settings_.password});
    } else {
      preamble.push_back({"AUTH", settings_.username, settings_.password});
    }
  }
  if (settings_.db != 0) preamble.push_back({"SELECT", std::to_string(settings_.db)});
  for (const auto& argv : preamble) {
    auto setup = std::make_shared<Pending>(io_, [this](Result<RedisReply> reply) {
      if (!reply.ok() || reply->type == RedisReply::Type::kError) {
        // The commands queued behind fail with this reason (e.g. WRONGPASS), not "lost".
        if (reply.ok()) setup_error_ = reply->str;
        Drop();
      }
    });
    if (!Send(argv, setup)) {
      Drop();
      return;
    }
  }
}

bool RedisConnection::Send(const std::vector<std::string>& argv, std::shared_ptr<Pending> pending) {
  std::vector<const char*> pointers;
  std::vector<std::size_t> lengths;
  pointers.reserve(argv.size());
  lengths.reserve(argv.size());
  for (const std::string& arg : argv) {
    pointers.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  // hiredis hands privdata back exactly once: with the reply, or with nullptr when the context
  // is freed first. The callback deletes it.
  auto* holder = new std::shared_ptr<Pending>(std::move(pending));
  if (redisAsyncCommandArgv(context_, &RedisConnection::OnReply, holder,
                            static_cast<int>(argv.size()), pointers.data(),
                            lengths.data()) != REDIS_OK) {
    delete holder;
    return false;
  }
  return true;
}

void RedisConnection::Drop() {
  if (context_ != nullptr) redisAsyncFree(context_);
}

void RedisConnection::OnContextGone() {
  context_ = nullptr;
  watcher_.reset();
  if (!closing_) {
    next_attempt_ = std::chrono::steady_clock::now() + backoff_;
    backoff_ = std::min(backoff_ * 2, settings_.backoff_max);
  }
}

void RedisConnection::OnReply(redisAsyncContext* context, void* reply, void* privdata) {
  std::unique_ptr<std::shared_ptr<Pending>> holder(
      static_cast<std::shared_ptr<Pending>*>(privdata));
  Pending& pending = **holder;
  pending.timer.cancel();
  if (pending.finished) return;
  if (reply == nullptr) {
    const auto* self = static_cast<const RedisConnection*>(context->data);
    std::string message = "rate limit storage unavailable";
    if (self != nullptr && !self->setup_error_.empty()) {
      message += ": the connection setup was refused: ";
      message += self->setup_error_;
    } else if (context->err != 0 && context->errstr != nullptr) {
      message += ": ";
      message += context->errstr;
    } else {
      message += " (connection lost)";
    }
    pending.Finish(Unavailable(std::move(message)));
    return;
  }
  pending.Finish(Copy(*static_cast<redisReply*>(reply)));
}

void RedisConnection::OnConnect(const redisAsyncContext* context, int status) {
  auto* self = static_cast<RedisConnection*>(context->data);
  // On failure hiredis frees the context right after this; the cleanup hook records it.
  if (status == REDIS_OK) self->backoff_ = self->settings_.backoff_initial;
}

}  // namespace staple::ratelimit
