#pragma once

// The one place that includes Boost.Asio: Boost 1.74 needs <utility> before it under C++20.
// clang-format off
#include <utility>

#include <boost/asio.hpp>
// clang-format on

namespace staple {
namespace net = boost::asio;
}  // namespace staple
