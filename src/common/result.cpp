#include "common/result.h"

namespace staple {

const char* ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument:
      return "invalid_argument";
    case ErrorKind::kNotFound:
      return "not_found";
    case ErrorKind::kUnavailable:
      return "unavailable";
    case ErrorKind::kStorage:
      return "storage";
    case ErrorKind::kMisconfigured:
      return "misconfigured";
    case ErrorKind::kOverloaded:
      return "overloaded";
    case ErrorKind::kTimeout:
      return "timeout";
    case ErrorKind::kUpstream:
      return "upstream_error";
    case ErrorKind::kCancelled:
      return "cancelled";
    case ErrorKind::kLimited:
      return "limited";
    case ErrorKind::kInternal:
      return "internal";
  }
  return "internal";
}

}  // namespace staple
