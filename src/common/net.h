#pragma once

// The one place that includes Boost.Asio: Boost 1.74 needs <utility> before it under C++20.
#include <utility>

#include <boost/asio.hpp>

namespace staple {
namespace net = boost::asio;
}  // namespace staple
