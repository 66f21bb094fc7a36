#pragma once

#include <string>
#include <utility>
#include <variant>

namespace staple {

// What went wrong, in terms the router can map to an HTTP status (see api/errors).
enum class ErrorKind {
  kInvalidArgument,  // the caller's input is wrong
  kNotFound,
  kUnavailable,  // a back end other than the conversation store (limiter storage) cannot be reached
  kStorage,      // the conversation store cannot be read or written (down, full, closed)
  kTimeout,      // a deadline passed
  kUpstream,     // the upstream answered, but with an error status or an invalid body
  kCancelled,    // the operation was abandoned (client went away, shutdown)
  kLimited,      // a limit refused the request (whoever applied it holds the answer to send)
  kMisconfigured,  // the configuration does not allow the operation (e.g. no upstream API key)
  kOverloaded,     // every upstream that could serve it is cooling down or at its cap: try later
  kInternal,       // a bug or an unexpected library failure
};

const char* ErrorKindName(ErrorKind kind);

struct Error {
  ErrorKind kind = ErrorKind::kInternal;
  std::string message;  // safe to show to a client: never contains secrets
};

inline Error MakeError(ErrorKind kind, std::string message) {
  return Error{kind, std::move(message)};
}

// A value or an Error. Expected failures travel as values; exceptions are for bugs and start-up.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT: implicit by design

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

using Status = Result<void>;

inline Status Ok() { return Status(); }

}  // namespace staple
