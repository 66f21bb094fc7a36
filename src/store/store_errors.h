#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "common/result.h"

namespace staple::store {

// kStorage: the database cannot be reached, opened or written.
inline Error StorageFailure(std::string message) {
  return MakeError(ErrorKind::kStorage, std::move(message));
}

// `error` prefixed with what was being done ("database read failed: …"), keeping its kind.
inline Error Context(std::string_view what, const Error& error) {
  return MakeError(error.kind, std::string(what) + ": " + error.message);
}

}  // namespace staple::store
